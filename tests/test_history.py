"""Nothing is lost: history, resume and gap filling through real replicas.

Every test runs against real redis-server and replica processes (and NGINX
where clients must move between replicas).  Readers here are
:class:`chat.tools.session.Session`, the code chat-client, chat-chaos and
chat-bench connect with: it resumes from the last number it saw and drops
repeats, and the tests check what it hands on: every number once, in order.
Because that client repairs what a replica gets wrong, each reader also
records what came off the wire (``tests/wire.py``), and the tests check that
too: no repeat, no hole, every acknowledged number sent by a replica.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from wire import Stream, check_wire, contiguous, metric

pytestmark = pytest.mark.slow

FAST = {"MESSAGE_RATE": "500", "MESSAGE_BURST": "500"}
WINDOW = {**FAST, "HISTORY_LENGTH": "20", "HISTORY_ON_JOIN": "5"}


@pytest.mark.parametrize("backplane", ["memory", "socketio", "pubsub"])
async def test_a_newcomer_gets_the_last_messages_in_order(shared_clusters, connect, backplane):
    replicas = 1 if backplane == "memory" else 3
    cluster = shared_clusters(replicas=replicas, mode=backplane, proxy=False, env=WINDOW)
    room = f"newcomer-{backplane}"
    ana = await connect(cluster.replicas[0].url, "ana", room=room)
    acks = [await ana.send(f"line {i}") for i in range(8)]
    assert [a["seq"] for a in acks] == list(range(1, 9))

    bia = await connect(cluster.replicas[-1].url, "bia", room=room)
    welcome = bia.welcome
    assert [m["text"] for m in welcome["history"]] == [f"line {i}" for i in range(3, 8)]
    assert [m["seq"] for m in welcome["history"]] == [4, 5, 6, 7, 8]
    assert (welcome["seq"], welcome["resumed"], welcome["gap"]) == (8, False, None)
    assert {m["epoch"] for m in welcome["history"]} == {welcome["epoch"]}
    first = welcome["history"][0]
    assert (first["name"], first["room"], first["server"]) == ("ana", room, "replica-1")

    # Joining a room brings its history the same way, in the ack and in a
    # fresh welcome that comes before any live message of the room.
    caio = await connect(cluster.replicas[0].url, "caio", room=f"{room}-elsewhere")
    ack = await caio.sio.call("join", {"room": room})
    assert [m["seq"] for m in ack["history"]] == [4, 5, 6, 7, 8]
    await caio.wait_for(lambda: caio.welcome["room"] == room)
    assert caio.welcome["history"] == ack["history"]


async def test_resume_replays_exactly_what_was_missed(shared_clusters, connect, mode):
    cluster = shared_clusters(replicas=3, mode=mode, proxy=False, env=WINDOW)
    room = f"resume-{mode}"
    r1, _, r3 = cluster.replicas
    ana = await connect(r1.url, "ana", room=room)
    seen = (await ana.send("seen"))["seq"]
    epoch = ana.welcome["epoch"]
    for i in range(3):
        await ana.send(f"missed {i}")

    back = await connect(r3.url, "back", auth={"name": "back", "room": room,
                                               "resume": {"epoch": epoch, "seq": seen}})
    assert back.welcome["resumed"] is True and back.welcome["gap"] is None
    assert [m["text"] for m in back.welcome["history"]] == ["missed 0", "missed 1", "missed 2"]

    # Up to date: nothing to replay.
    now = await connect(r3.url, "now", auth={"name": "now", "room": room,
                                             "resume": {"epoch": epoch, "seq": seen + 3}})
    assert (now.welcome["resumed"], now.welcome["history"]) == (True, [])


async def test_resume_from_beyond_the_window_is_flagged(shared_clusters, connect, mode):
    cluster = shared_clusters(replicas=3, mode=mode, proxy=False, env=WINDOW)
    room = f"window-{mode}"
    ana = await connect(cluster.replicas[0].url, "ana", room=room)
    old = (await ana.send("long ago"))["seq"]
    epoch = ana.welcome["epoch"]
    for i in range(25):  # the window is 20
        await ana.send(f"since {i}")

    late = await connect(cluster.replicas[1].url, "late", auth={
        "name": "late", "room": room, "resume": {"epoch": epoch, "seq": old}})
    assert late.welcome["resumed"] is False
    assert "more messages than the history keeps" in late.welcome["gap"]
    assert [m["text"] for m in late.welcome["history"]] == [f"since {i}" for i in range(20, 25)]

    stranger = await connect(cluster.replicas[2].url, "stranger", auth={
        "name": "stranger", "room": room, "resume": {"epoch": "0ther", "seq": 3}})
    assert "reset" in stranger.welcome["gap"]

    # The same answer to a client that asks for history by number.
    answer = await late.sio.call("history", {"after": old, "epoch": epoch})
    assert answer["ok"] and "more messages" in answer["gap"]
    answer = await late.sio.call("history", {"after": 20, "epoch": epoch})
    assert answer["gap"] is None
    assert [m["seq"] for m in answer["messages"]] == [21, 22, 23, 24, 25, 26]


async def test_a_replica_killed_mid_stream_costs_its_clients_nothing(
        cluster_factory, connect, readers, mode):
    cluster = cluster_factory(replicas=3, mode=mode, env=FAST)
    r1, _, r3 = cluster.replicas
    room = "stream"
    audience = await asyncio.gather(*(readers(cluster.url, f"r{i}", room) for i in range(12)))
    victims = [r for r in audience if r.server == "replica-2"]
    assert victims, "no reader landed on replica-2"
    # Senders talk to the survivors directly, so the stream never stops.
    senders = [await connect(r1.url, "s1", room=room), await connect(r3.url, "s3", room=room)]

    with Stream(senders) as stream:
        await asyncio.sleep(1.0)
        cluster.kill_replica("replica-2")
        killed = len(stream.acked)
        await asyncio.sleep(2.0)
    await stream.stop()
    last = max(stream.acked)
    for reader in audience:
        await reader.until(lambda reader=reader: reader.seqs and reader.seqs[-1] >= last)

    print(f"\n{mode}: {len(stream.acked)} messages ({killed} before the kill), "
          f"{len(victims)} readers moved")
    assert stream.refused == []
    for reader in audience:
        assert contiguous(reader.seqs), f"{reader.name}: hole or repeat"
        assert reader.gaps == []
    check_wire(audience, stream.acked)
    for reader in victims:
        assert len(reader.servers) == 2 and reader.servers[-1] != "replica-2"


@pytest.mark.parametrize("catch_up", ["1", "0"], ids=["catch-up", "live-only"])
async def test_a_cut_subscription_costs_the_replicas_clients_nothing(
        shared_clusters, connect, readers, mode, catch_up):
    """With the Sequencer's catch-up off (``CATCH_UP_EVERY=0``) only the live
    path and its hole filling remain: a replica whose subscription did not
    really come back leaves its reader short, where the catch-up would
    have hidden it."""
    cluster = shared_clusters(replicas=3, mode=mode, proxy=False,
                              env={**FAST, "CATCH_UP_EVERY": catch_up})
    room = f"cut-{mode}"
    audience = [await readers(r.url, f"{r.server_id}-reader", room) for r in cluster.replicas]
    sender = await connect(cluster.replicas[0].url, "sender", room=room)
    admin = redis.Redis.from_url(cluster.redis_url, socket_timeout=5)
    try:
        with Stream([sender], every=0.005) as stream:
            await asyncio.sleep(0.5)
            # Cut every replica's subscription, and again each time it comes
            # back, for half a second: the live path drops messages for sure.
            killed = 0
            cutting = time.monotonic()
            while time.monotonic() - cutting < 0.5:
                killed += admin.client_kill_filter(_type="pubsub")
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)
        await stream.stop()
    finally:
        admin.close()
    assert killed >= 3  # every replica's subscription, at least once
    last = max(stream.acked)
    for reader in audience:
        await reader.until(lambda reader=reader: reader.seqs and reader.seqs[-1] >= last)
        assert contiguous(reader.seqs), f"{reader.name}: hole or repeat"
        assert reader.gaps == []
    assert stream.refused == []
    check_wire(audience, stream.acked)
    recovered = await asyncio.gather(*(metric(r.url, "chat_messages_recovered_total")
                                       for r in cluster.replicas))
    print(f"\n{mode}: {len(stream.acked)} messages, {killed} subscriptions cut; read back "
          f"from history per replica: {recovered}")
    assert sum(recovered) > 0  # the cut did drop live messages, and history made up for it


async def test_a_client_that_misses_a_number_asks_for_it(shared_clusters, connect, readers):
    """The client-side check: a jump in numbers makes the session ask the
    server for the history in between (here the jump is made by hand)."""
    cluster = shared_clusters(replicas=1, mode="pubsub", proxy=False, env=FAST)
    url = cluster.replicas[0].url
    reader = await readers(url, "jumpy", "jumps")
    writer = await connect(url, "writer", room="jumps")
    acks = [await writer.send(f"n {i}") for i in range(3)]
    await reader.until(lambda: reader.seqs[-1:] == [acks[-1]["seq"]])
    reader.cursor.seq -= 2  # as if the last two had never arrived
    reader.seqs = reader.seqs[:-2]
    await writer.send("after the jump")
    await reader.until(lambda: reader.texts[-1:] == ["after the jump"])
    assert contiguous(reader.seqs) and reader.texts[-3:] == ["n 1", "n 2", "after the jump"]


async def test_a_repair_cut_by_a_reconnection_is_tried_again(cluster_factory, connect, readers):
    """The client asks for a hole while its replica is gone (the ``history``
    call fails at once): it must ask again once reconnected, not give up the
    hole as a gap."""
    cluster = cluster_factory(replicas=2, mode="pubsub", env=FAST)
    reader = await readers(cluster.url, "mover", "repairs")
    other = next(r for r in cluster.replicas if r.server_id != reader.server)
    writer = await connect(other.url, "writer", room="repairs")
    acks = [await writer.send(f"n {i}") for i in range(3)]
    await reader.until(lambda: reader.seqs[-1:] == [acks[-1]["seq"]])

    last = reader.last_event  # n 2, as it came
    cluster.kill_replica(reader.server)
    async with asyncio.timeout(5):
        while reader.welcomed.is_set():  # cleared when the connection drops
            await asyncio.sleep(0.01)
    # While disconnected: as if "n 1" had never arrived, and "n 2" just did.
    reader.cursor.seq -= 2
    reader.seqs, reader.texts = reader.seqs[:-2], reader.texts[:-2]
    reader._on_message(last)
    await reader.until(lambda: len(reader.servers) == 2 and not reader.cursor.behind, 15)
    assert reader.servers[-1] == other.server_id
    assert reader.gaps == []
    assert reader.texts[-2:] == ["n 1", "n 2"] and contiguous(reader.seqs)
