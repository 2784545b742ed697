"""Socket.IO's own connection state recovery, for the stock client, across
replicas (issue 16).

What is promised: a client that opts in (``auth.recovery = true``) gets a
``pid`` beside its ``sid`` in the CONNECT answer, and an offset as the last
argument of its ``welcome`` and of every room ``message``.  The official
socket.io-client keeps both and sends them back when it reconnects.  Within
``RECOVERY_WINDOW`` seconds, on whichever replica it lands, it then gets its
session back: the same id, ``socket.recovered``, the messages it missed
replayed in order before any live one, no second ``welcome``, and nobody in
the room sees it leave and come back.  Otherwise (window passed, a forged
pid, a pid a live session holds) it gets a fresh session, as on a first
connect.  Clients that do not opt in see exactly what they saw before.

How it is judged: the client is the real one (``tests/stock.py`` drives
``node_modules/socket.io-client`` in a Node process) connected through NGINX,
and its records are what its handlers saw, nothing repaired.  A Python
``ChatClient`` straight on a replica that stays up talks (``keep_sending``)
and watches the room's presence.  Each test gathers its outcome in one dict
and compares it with the promise, so a failure shows every difference at
once.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import jwt
import pytest
import socketio
from stock import (
    StockClient,
    flicker,
    judge,
    more_acks,
    ok_seqs,
    on_the_wire,
    talking,
    until,
    within,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

TTL = 3.0  # PRESENCE_TTL: a dead replica's people leave within TTL + TTL/3
WINDOW = 3.0  # RECOVERY_WINDOW where a test waits it out
ENV = {"PRESENCE_TTL": str(TTL), "MESSAGE_RATE": "500", "MESSAGE_BURST": "500"}
# A presence change goes out within one batch (0.25 s, presence.py): a
# left/joined pair caused by a reconnection would be out well within this.
SETTLE = 1.0


@pytest.fixture
async def stock(tmp_path):
    """Return ``await start(name)``: an official client in a Node process of
    its own; every process is stopped (by its PID) after the test."""
    started: list[StockClient] = []

    async def start(name: str) -> StockClient:
        client = StockClient(name, tmp_path / f"{name}.node.log")
        started.append(client)
        return await client.start()

    yield start
    await asyncio.gather(*(c.stop() for c in started), return_exceptions=True)


def new_room() -> str:
    return f"rec-{secrets.token_hex(4)}"


def judge_recovery(lia, first, back, room, acked, sam, since) -> None:
    """``lia`` (first connected as ``first``, back as ``back``) got her
    session back, every acked message once and in order, and ``sam``
    (presence events after ``since``) never saw her go."""
    judge({
        "pid in CONNECT": bool(first["pid"]), "recovered": back["recovered"],
        "same id": back["id"] == first["id"], "welcomes": len(lia.events("welcome")),
        **on_the_wire(lia, room, acked), "the room saw lia": flicker(sam, "lia", since),
    }, {"pid in CONNECT": True, "recovered": True, "same id": True, "welcomes": 1,
        "acked but never received": [], "repeated or backwards": [], "holes after": [],
        "events without an offset": 0, "the room saw lia": []})


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_listener_whose_replica_dies_gets_its_session_back_on_a_survivor(
        cluster_factory, connect, stock, mode, transport):
    cluster = cluster_factory(replicas=3, mode=mode, env=ENV)
    room = new_room()
    lia = await stock("lia")
    first = await lia.connect(cluster.url, room, transports=[transport])
    dead = lia.server()
    survivor = next(r for r in cluster.replicas if r.server_id != dead)
    sam = await connect(survivor.url, "sam", room=room)

    async with talking(sam, "crash") as acks:
        await until(lambda: len(lia.seqs(room)) >= 5, 10, "lia hearing sam")
        since, killed = len(sam.presence), time.monotonic()
        await asyncio.to_thread(cluster.kill_replica, dead)
        back = (await lia.until(lambda: lia.of("connect")[1:], 15, "reconnection"))[0]
        await more_acks(acks, 10, "sam talking after lia's reconnection")
    acked = ok_seqs(acks)
    await lia.until(lambda: acked[-1] in lia.seqs(room), 10, "the last acked message")
    gone = lia.of("disconnect")[0]["t"]
    missed = [a["seq"] for t, a in acks if a.get("ok") and gone <= t <= back["t"]]
    assert missed, "nothing was acked while lia was away: nothing to replay, proves nothing"
    # A dead replica's people leave the list within TTL + a refresh: had
    # lia's entry been left to expire, the room would have seen it by now.
    await asyncio.sleep(max(0.0, killed + TTL * 1.5 + 1 - time.monotonic()))

    print(f"\n{mode}/{transport}: {len(missed)} acked while away; back {back}")
    judge_recovery(lia, first, back, room, acked, sam, since)


async def test_a_listener_away_past_the_presence_ttl_after_a_crash_is_not_seen_leaving(
        cluster_factory, connect, stock, mode):
    """Its replica killed, the listener stays away longer than a dead
    replica's people are kept (PRESENCE_TTL), then comes back within the
    window: its seat lived on meanwhile, so the room saw no left/joined."""
    cluster = cluster_factory(replicas=3, mode=mode, env={**ENV, "RECOVERY_WINDOW": "20"})
    room = new_room()
    lia = await stock("lia")
    first = await lia.connect(cluster.url, room)
    dead = lia.server()
    survivor = next(r for r in cluster.replicas if r.server_id != dead)
    sam = await connect(survivor.url, "sam", room=room)
    seq = (await sam.send("before"))["seq"]
    await lia.until(lambda: seq in lia.seqs(room), 5, "lia hearing sam")
    since = len(sam.presence)
    lia.command("pause")  # no reconnection until told
    await asyncio.to_thread(cluster.kill_replica, dead)
    await lia.until(lambda: lia.of("disconnect"), 5, "the disconnect")
    missed = [(await sam.send(f"away {i}"))["seq"] for i in range(3)]
    await asyncio.sleep(TTL * 2 + 1)  # a dead replica's plain seats are gone by now
    back = await lia.come_back()
    await lia.until(lambda: set(missed) <= set(lia.seqs(room)), 10, "what she missed")
    await asyncio.sleep(SETTLE)
    judge({"recovered": back["recovered"], "same id": back["id"] == first["id"],
           "the room saw lia": flicker(sam, "lia", since)},
          {"recovered": True, "same id": True, "the room saw lia": []})


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_transport_the_client_closed_gets_its_session_back(
        cluster_factory, connect, stock, mode, transport):
    cluster = cluster_factory(replicas=2, mode=mode, env=ENV)
    room = new_room()
    lia = await stock("lia")
    first = await lia.connect(cluster.url, room, transports=[transport])
    other = next(r for r in cluster.replicas if r.server_id != lia.server())
    sam = await connect(other.url, "sam", room=room)

    async with talking(sam, "cut") as acks:
        await until(lambda: len(lia.seqs(room)) >= 3, 10, "lia hearing sam")
        since = len(sam.presence)
        await lia.go_away()  # engine closed: no Socket.IO DISCONNECT
        await more_acks(acks, 5, "sam talking while lia is away")
        back = await lia.come_back()  # same sticky key: the same replica
        await more_acks(acks, 5, "sam talking after lia's return")
    acked = ok_seqs(acks)
    await lia.until(lambda: acked[-1] in lia.seqs(room), 10, "the last acked message")
    await asyncio.sleep(SETTLE)

    judge_recovery(lia, first, back, room, acked, sam, since)


async def test_one_node_without_redis_keeps_sessions_in_memory(single_node, connect, stock):
    """``python -m chat`` alone (no Redis): the session records live in
    the process, and a closed transport comes back the same way."""
    room = new_room()
    lia = await stock("lia")
    first = await lia.connect(single_node, room)
    sam = await connect(single_node, "sam", room=room)
    async with talking(sam, "alone") as acks:
        await until(lambda: len(lia.seqs(room)) >= 3, 10, "lia hearing sam")
        since = len(sam.presence)
        await lia.go_away()
        await more_acks(acks, 5, "sam talking while lia is away")
        back = await lia.come_back()
        await more_acks(acks, 5, "sam talking after lia's return")
    acked = ok_seqs(acks)
    await lia.until(lambda: acked[-1] in lia.seqs(room), 10, "the last acked message")
    await asyncio.sleep(SETTLE)
    judge_recovery(lia, first, back, room, acked, sam, since)


async def test_with_signed_identities_only_the_same_user_gets_the_session(
        cluster_factory, connect, stock, mode):
    """A recovery is no way into another user's session: the pid comes
    with a token, which must still admit the user who held it."""
    secret = "recovery-secret-for-tests-0123456789abcdef"

    def token(sub: str) -> str:
        return jwt.encode({"sub": sub, "name": sub, "exp": int(time.time()) + 600}, secret)

    cluster = cluster_factory(replicas=2, mode=mode, env={**ENV, "AUTH_JWT_SECRET": secret})
    room = new_room()
    lia = await stock("lia")
    first = await lia.connect(cluster.url, room, auth={"token": token("lia"), "room": room})
    sam = await connect(cluster.replicas[0].url, "sam", auth={"token": token("sam"),
                                                              "room": room})
    seq = (await sam.send("before"))["seq"]
    await lia.until(lambda: seq in lia.seqs(room), 5, "lia hearing sam")
    held = await lia.state()
    await lia.go_away()
    missed = (await sam.send("while away"))["seq"]
    # Her pid with mallory's own valid token: a fresh session as mallory.
    mallory = await stock("mallory")
    stolen = await mallory.connect(cluster.url, room, pid=held["pid"], offset=held["offset"],
                                   auth={"token": token("mallory"), "room": room})
    await within(lambda: mallory.events("welcome"), 5)
    back = await lia.come_back()
    await lia.until(lambda: missed in lia.seqs(room), 10, "the message she missed")
    judge({
        "pid in CONNECT": bool(first["pid"]),
        "mallory: recovered": stolen["recovered"],
        "mallory: new id": stolen["id"] != first["id"],
        "mallory: is mallory": mallory.events("welcome")[-1][0]["id"],
        "lia: recovered": back["recovered"], "lia: same id": back["id"] == first["id"],
    }, {
        "pid in CONNECT": True, "mallory: recovered": False, "mallory: new id": True,
        "mallory: is mallory": "mallory", "lia: recovered": True, "lia: same id": True,
    })


async def test_after_the_window_a_returning_client_gets_a_fresh_session(
        cluster_factory, connect, stock, mode):
    cluster = cluster_factory(replicas=2, mode=mode,
                              env={**ENV, "RECOVERY_WINDOW": str(int(WINDOW))})
    room = new_room()
    sam = await connect(cluster.replicas[0].url, "sam", room=room)
    lia = await stock("lia")
    first = await lia.connect(cluster.url, room)
    await sam.wait_for(lambda: sam.saw("joined", "lia"))
    seq = (await sam.send("before"))["seq"]
    await lia.until(lambda: seq in lia.seqs(room), 5, "lia hearing sam")

    since, gone = len(sam.presence), time.monotonic()
    await lia.go_away()
    missed = [(await sam.send(f"missed {i}"))["seq"] for i in range(2)]
    left = await within(lambda: "left" in flicker(sam, "lia", since), WINDOW + TTL + 3)
    left_after = time.monotonic() - gone if left else None
    await asyncio.sleep(max(0.0, gone + WINDOW + 0.5 - time.monotonic()))
    back = await lia.come_back()
    await lia.until(lambda: len(lia.events("welcome")) > 1, 10, "a welcome (fresh session)")
    await within(lambda: flicker(sam, "lia", since)[-1:] == ["joined"], 5)

    print(f"\n{mode}: the room saw lia leave "
          f"{'never' if left_after is None else f'after {left_after:.2f} s'}")
    judge({
        "pid in CONNECT": bool(first["pid"]),
        # Not before the window (she might have come back), nor long after.
        "left within [window, window + TTL]":
            left_after is not None and WINDOW - 0.2 <= left_after <= WINDOW + TTL + 1,
        "recovered": back["recovered"],
        "new id": back["id"] != first["id"],
        "welcomes": len(lia.events("welcome")),
        "missed replayed as events": [s for s in missed if s in lia.seqs(room)],
        "the room saw lia": flicker(sam, "lia", since),
    }, {"pid in CONNECT": True, "left within [window, window + TTL]": True,
        "recovered": False, "new id": True, "welcomes": 2,
        "missed replayed as events": [], "the room saw lia": ["left", "joined"]})


async def test_a_return_the_history_no_longer_reaches_gets_a_fresh_session(
        cluster_factory, connect, stock, mode):
    kept = 5  # HISTORY_LENGTH: the room keeps its last five messages
    cluster = cluster_factory(replicas=2, mode=mode, env={
        **ENV, "HISTORY_LENGTH": str(kept), "HISTORY_ON_JOIN": str(kept)})
    room = new_room()
    sam = await connect(cluster.replicas[0].url, "sam", room=room)
    lia = await stock("lia")
    first = await lia.connect(cluster.url, room)
    seq = (await sam.send("before"))["seq"]
    await lia.until(lambda: seq in lia.seqs(room), 5, "lia hearing sam")
    await lia.go_away()
    missed = [(await sam.send(f"missed {i}"))["seq"] for i in range(kept + 3)]
    back = await lia.come_back()  # well within RECOVERY_WINDOW (120 s)
    await lia.until(lambda: len(lia.events("welcome")) > 1 or set(missed) <= set(lia.seqs(room)),
                    10, "a welcome or the missed messages")

    judge({
        "pid in CONNECT": bool(first["pid"]), "recovered": back["recovered"],
        "new id": back["id"] != first["id"], "welcomes": len(lia.events("welcome")),
        "missed replayed as events": [s for s in missed if s in lia.seqs(room)],
    }, {"pid in CONNECT": True, "recovered": False, "new id": True, "welcomes": 2,
        "missed replayed as events": []})


def forgeries(pid: str | None) -> list[str]:
    """A random pid of the same length, and the real one with a character changed."""
    if not pid:
        return [secrets.token_hex(8)]
    last = "A" if pid[-1] != "A" else "B"
    return [secrets.token_hex(len(pid))[:len(pid)], pid[:-1] + last]


async def test_a_forged_or_reused_pid_gets_a_fresh_session(cluster_factory, connect, stock, mode):
    cluster = cluster_factory(replicas=2, mode=mode, env=ENV)
    room = new_room()
    sam = await connect(cluster.replicas[0].url, "sam", room=room)
    lia = await stock("lia")
    first = await lia.connect(cluster.url, room)
    seq = (await sam.send("before"))["seq"]
    await lia.until(lambda: seq in lia.seqs(room), 5, "lia hearing sam")
    held = await lia.state()  # what the client will send back
    await lia.go_away()
    missed = [(await sam.send(f"missed {i}"))["seq"] for i in range(2)]

    # While lia's session waits for her, others present forged pids.
    forged = []
    for n, pid in enumerate(forgeries(held["pid"])):
        fred = await stock(f"fred{n}")
        forged.append((fred, await fred.connect(cluster.url, room, pid=pid,
                                                offset=held["offset"])))
        await within(lambda fred=fred: fred.events("welcome"), 5)
    back = await lia.come_back()
    await lia.until(lambda: set(missed) <= set(lia.seqs(room)) or len(lia.events("welcome")) > 1,
                    10, "the missed messages or a welcome")

    # lia is live again: her pid, presented by someone else, is worth
    # nothing, on her replica or on the other one.
    now = await lia.state()
    reusers = []
    for n, replica in enumerate(cluster.replicas):
        ivan = await stock(f"ivan{n}")
        reusers.append((ivan, await ivan.connect(replica.url, room, pid=now["pid"],
                                                 offset=now["offset"])))
        await within(lambda ivan=ivan: ivan.events("welcome"), 5)
    after = (await sam.send("after"))["seq"]
    for client in (lia, *(ivan for ivan, _ in reusers)):
        await client.until(lambda c=client: after in c.seqs(room), 5, "the next message")
    end = await lia.state()

    judge({
        "pid in CONNECT": bool(first["pid"]),
        "forged: recovered": [c["recovered"] for _, c in forged],
        "forged: new id": [c["id"] != first["id"] for _, c in forged],
        "forged: welcomes": [len(f.events("welcome")) for f, _ in forged],
        "forged: replayed": [[s for s in f.seqs(room) if s in missed] for f, _ in forged],
        "lia: recovered": back["recovered"],
        "lia: same id": back["id"] == first["id"],
        "lia: missed": sorted(set(missed) - set(lia.seqs(room))),
        "reused: recovered": [c["recovered"] for _, c in reusers],
        "reused: new id": [c["id"] != first["id"] for _, c in reusers],
        "reused: welcomes": [len(i.events("welcome")) for i, _ in reusers],
        "reused: replayed": [[s for s in i.seqs(room) if s != after] for i, _ in reusers],
        "lia still there": (end["connected"], end["id"] == first["id"],
                            len(lia.of("disconnect"))),
    }, {
        "pid in CONNECT": True, "forged: recovered": [False] * len(forged),
        "forged: new id": [True] * len(forged), "forged: welcomes": [1] * len(forged),
        "forged: replayed": [[]] * len(forged),
        "lia: recovered": True, "lia: same id": True, "lia: missed": [],
        "reused: recovered": [False] * 2, "reused: new id": [True] * 2,
        "reused: welcomes": [1] * 2, "reused: replayed": [[]] * 2,
        "lia still there": (True, True, 1),
    })


async def test_clients_that_do_not_opt_in_see_what_they_saw_before(shared_clusters, stock, mode):
    cluster = shared_clusters(replicas=2, mode=mode)
    room = new_room()
    calls: dict[str, list] = {"welcome": [], "message": []}
    answers: list = []
    sio = socketio.AsyncClient(reconnection=False)
    for event, seen in calls.items():
        sio.on(event, lambda *args, seen=seen: seen.append(args))
    handle_connect = sio._handle_connect

    async def spy(namespace, data):  # the CONNECT answer, as it arrived
        answers.append(data)
        await handle_connect(namespace, data)

    sio._handle_connect = spy
    await sio.connect(f"{cluster.url}?sticky={secrets.token_hex(8)}", transports=["websocket"],
                      auth={"name": "pia", "key": secrets.token_hex(8), "room": room},
                      wait_timeout=10)
    try:
        nia = await stock("nia")
        plain = await nia.connect(cluster.url, room, recovery=False)
        ack = await sio.call("message", {"text": "plain"}, timeout=5)
        await until(lambda: calls["message"], 5, "pia hearing herself")
        await nia.until(lambda: nia.events("message"), 5, "nia hearing pia")
    finally:
        await sio.disconnect()

    judge({
        "python: CONNECT answer": sorted(answers[0]),
        "python: welcome arguments": [len(args) for args in calls["welcome"]],
        "python: message arguments": [len(args) for args in calls["message"]],
        "python: ack": sorted(ack),
        "stock: pid": plain["pid"],
        "stock: welcome arguments": [len(args) for args in nia.events("welcome")],
        "stock: message arguments": [len(args) for args in nia.events("message")],
    }, {
        "python: CONNECT answer": ["sid"], "python: welcome arguments": [1],
        "python: message arguments": [1], "python: ack": ["id", "ok", "seq"],
        "stock: pid": None, "stock: welcome arguments": [1], "stock: message arguments": [1],
    })
