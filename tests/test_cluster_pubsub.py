"""pubsub mode on a Redis Cluster: sharded pub/sub, one link per shard.

A Cluster of 3 masters and 3 replicas (``chat/tools/redis_topology.py``,
real redis-server processes) and three replica processes.  Rooms are chosen
so that their slots fall on each of the three masters; what the replicas
write is read off the wire (``wire.Reader``), before any client repair.
Also on a Cluster: ``/readyz`` through a master's death, and a client's
resume (``cluster_slots.py`` says where things are).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from cluster_slots import (
    KEYS,
    listeners_at,
    masters,
    masters_or_none,
    migrate_slot,
    node_named,
    plain_master,
    room_on,
)
from redis.crc import key_slot
from wire import check_wire, contiguous, keep_sending, metric

from chat.tools.processes import alive
from chat.tools.redis_topology import command

pytestmark = pytest.mark.slow


async def test_rooms_on_every_master_cross_replicas_each_on_its_shard(
        cluster_factory, connect, readers):
    cluster = cluster_factory(replicas=3, mode="pubsub", proxy=False, redis="cluster")
    r1, r2, r3 = cluster.replicas
    rooms = [room_on(owned, f"shard{i}") for i, owned in enumerate(masters(cluster).values())]
    quiet = room_on(next(iter(masters(cluster).values())), "quiet")

    audience = {room: [await readers(r.url, f"{r.server_id}-{room}", room) for r in (r2, r3)]
                for room in rooms}
    senders = {room: await connect(r1.url, f"s-{room}", room=room) for room in rooms}
    lonely = await connect(r2.url, "lonely", room=quiet)  # the quiet room: r1 and r2 only
    await asyncio.sleep(0.6)  # the arrivals' presence news has gone out
    heard = await metric(r3.url, "chat_backplane_received")

    acked = {room: [] for room in rooms}
    for n in range(10):
        for room, sender in senders.items():
            ack = await sender.send(f"{room} {n}")
            assert ack["ok"], ack
            acked[room].append(ack["seq"])
    assert (await (await connect(r1.url, "talker", room=quiet)).send("only r1, r2"))["ok"]
    await lonely.wait_for(lambda: lonely.texts() == ["only r1, r2"])

    for room in rooms:
        assert acked[room] == list(range(1, 11))
        for reader in audience[room]:
            await reader.until(lambda reader=reader: len(reader.seqs) >= 10, timeout=10)
            assert reader.seqs == acked[room], reader.name
        check_wire(audience[room], acked[room])
    # replica-3 has nobody in the quiet room: it heard the three busy rooms
    # (its readers are there) and nothing of the quiet one.
    assert await metric(r3.url, "chat_backplane_received") - heard == 30
    # A newcomer gets the room's history, stored on its shard.
    late = await connect(r3.url, "late", room=rooms[2])
    assert [m["seq"] for m in late.welcome["history"]] == acked[rooms[2]]
    assert late.welcome["presence_count"] >= 3


async def test_a_master_killed_loses_no_acked_message(cluster_factory, connect, readers):
    cluster = cluster_factory(replicas=2, mode="pubsub", proxy=False, redis="cluster")
    r1, r2 = cluster.replicas
    owner, owned = next(iter(masters(cluster).items()))
    room = room_on(owned, "busy")
    audience = [await readers(r.url, f"{r.server_id}-reader", room) for r in (r1, r2)]
    sender = await connect(r1.url, "sender", room=room)
    acks: list[tuple[float, dict]] = []
    stop = asyncio.Event()


    task = asyncio.ensure_future(keep_sending(sender, "busy", acks, stop))
    try:
        await asyncio.sleep(1.0)
        victim = node_named(cluster, owner)
        killed_at = time.monotonic()
        cluster.topology.kill(victim)
        deadline = killed_at + 60
        while owner in (now := masters_or_none(cluster)) or len(now) < 3:
            assert time.monotonic() < deadline, "no failover within 60 s"
            await asyncio.sleep(0.1)
        promoted = time.monotonic() - killed_at
        # Both replicas subscribe the room again at its new master, by
        # themselves (before the dead node is back: a restarted node would
        # serve the old links as a replica of the shard).
        channel = KEYS.room_channel(room)
        new_owner = next(port for port, owned in masters(cluster).items()
                         if owned[0] <= key_slot(channel.encode()) <= owned[1])
        while listeners_at(new_owner, channel) < 2:
            assert time.monotonic() < deadline, "the room's channel not subscribed again"
            await asyncio.sleep(0.05)
        resubscribed = time.monotonic() - killed_at
        cluster.topology.restart(victim)  # rejoins as the new master's replica
        while not (acks and acks[-1][1].get("ok") and acks[-1][0] > killed_at + promoted):
            assert time.monotonic() < deadline, f"not recovered: last ack {acks[-1][1]}"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        # Subscribed again at the new master: the next ten reach replica-2
        # live, none read back from the history.
        recovered, sent = await metric(r2.url, "chat_messages_recovered"), len(acks)
        while len([a for _, a in acks[sent:] if a.get("ok")]) < 10:
            await asyncio.sleep(0.1)
        last = acks[-1][1]["seq"]
        await audience[1].until(lambda: audience[1].seqs[-1] >= last, timeout=15)
        assert await metric(r2.url, "chat_messages_recovered") == recovered
    finally:
        stop.set()
        await task
    ok = [ack["seq"] for _, ack in acks if ack.get("ok")]
    refused = sorted({ack["error"][:40] for _, ack in acks if not ack.get("ok")})
    first_ok = min(t for t, ack in acks if ack.get("ok") and t > killed_at) - killed_at
    print(f"\nfailover after {promoted:.2f} s, subscribed again after {resubscribed:.2f} s, "
          f"first ok ack after {first_ok:.2f} s; "
          f"{len(ok)} acked ok, refused {len(acks) - len(ok)}: {refused}")
    for replica in cluster.replicas:
        assert alive(replica.pid), f"{replica.server_id} died"
    for reader in audience:
        await reader.until(lambda reader=reader: reader.seqs and reader.seqs[-1] >= max(ok),
                           timeout=15)
        assert contiguous(reader.seqs), f"{reader.name}: hole or repeat"
    check_wire(audience, ok)


async def test_a_busy_rooms_slot_migrated_loses_nothing(cluster_factory, connect, readers):
    cluster = cluster_factory(replicas=2, mode="pubsub", proxy=False, redis="cluster")
    r1, r2 = cluster.replicas
    (source, owned), (target, _), (third, _) = masters(cluster).items()
    room = room_on(owned, "moving")
    slot = key_slot(KEYS.room_channel(room).encode())
    audience = [await readers(r.url, f"{r.server_id}-reader", room) for r in (r1, r2)]
    sender = await connect(r1.url, "sender", room=room)
    acked: list[int] = []
    retries = 0
    stop = asyncio.Event()

    async def send():
        nonlocal retries
        n = 0
        while not stop.is_set():
            n += 1
            while True:  # the same id until it is stored: never twice
                try:
                    ack = await sender.sio.call("message", {"text": f"m{n}",
                                                            "id": f"moving-{n:06}"}, timeout=5)
                except TimeoutError:
                    ack = {"ok": False}
                if ack.get("ok"):
                    acked.append(ack["seq"])
                    break
                retries += 1
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)

    task = asyncio.ensure_future(send())
    try:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(migrate_slot, slot, source, target, [third])
        moved_at = len(acked)
        while len(acked) < moved_at + 10:
            await asyncio.sleep(0.1)
        recovered = await metric(r2.url, "chat_messages_recovered")
        while len(acked) < moved_at + 20:
            await asyncio.sleep(0.1)
        await audience[1].until(lambda: audience[1].seqs[-1] >= acked[-1], timeout=15)
        # Subscriptions followed the slot: the last ten reached replica-2
        # live, none read back from the history.
        assert await metric(r2.url, "chat_messages_recovered") == recovered
    finally:
        stop.set()
        await task
    owner = command(target, "CLUSTER", "COUNTKEYSINSLOT", str(slot))
    assert owner is not None and int(owner) >= 3  # the room's keys are on the target now
    print(f"\nslot {slot} moved after {moved_at} messages; {len(acked)} acked, "
          f"{retries} sends tried again")
    assert acked == list(range(1, len(acked) + 1))
    for reader in audience:
        await reader.until(lambda reader=reader: reader.seqs and reader.seqs[-1] >= acked[-1],
                           timeout=15)
        assert contiguous(reader.seqs), f"{reader.name}: hole or repeat"
    check_wire(audience, acked)


async def test_many_rooms_subscribed_at_once_all_live(cluster_factory, connect, readers):
    """Thirty rooms entered on one replica at once: their SSUBSCRIBEs go out
    together (one command per slot: a Cluster refuses channels of several
    slots in one), and every room is heard live."""
    cluster = cluster_factory(replicas=2, mode="pubsub", proxy=False, redis="cluster")
    r1, r2 = cluster.replicas
    rooms = [f"many-{i}" for i in range(30)]
    audience = await asyncio.gather(*(readers(r2.url, f"r-{room}", room) for room in rooms))
    senders = await asyncio.gather(*(connect(r1.url, f"s-{room}", room=room) for room in rooms))
    await asyncio.sleep(0.6)  # the arrivals' presence news has gone out
    heard = await metric(r2.url, "chat_backplane_received")
    recovered = await metric(r2.url, "chat_messages_recovered")
    for sender in senders:
        assert (await sender.send("hello"))["ok"]
    for reader in audience:
        await reader.until(lambda reader=reader: reader.seqs == [1], timeout=10)
    assert await metric(r2.url, "chat_backplane_received") - heard == 30
    assert await metric(r2.url, "chat_messages_recovered") == recovered


async def readyz(url: str, http: aiohttp.ClientSession) -> tuple[bool, str]:
    try:
        async with http.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200, (await r.json())["reason"]
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, f"no answer: {exc!r}"


async def test_readyz_is_503_while_a_master_of_its_rooms_is_dead(cluster_factory, connect):
    """Readiness covers every master the replica hears a room on, not only
    the control channel's: one SIGKILLed (neither the control channel's nor
    redis-py's default node) makes /readyz 503 before its replica is
    promoted, and 200 again by itself afterwards (the dead node stays dead)."""
    cluster = cluster_factory(replicas=1, mode="pubsub", proxy=False, redis="cluster")
    replica = cluster.replicas[0]
    victim, owned = plain_master(cluster)
    await connect(replica.url, "member", room=room_on(owned, "ready"))

    def failed_over() -> bool:
        now = masters_or_none(cluster)
        return len(now) == 3 and victim not in now

    async with aiohttp.ClientSession() as http:
        assert (await readyz(replica.url, http))[0]
        cluster.topology.kill(node_named(cluster, victim))
        killed_at = time.monotonic()
        while (answer := await readyz(replica.url, http))[0]:
            assert not failed_over(), "the failover completed while /readyz said 200"
            assert time.monotonic() < killed_at + 60, "/readyz 200 for 60 s"
            await asyncio.sleep(0.05)
        not_ready, reason = time.monotonic() - killed_at, answer[1]
        while not (await readyz(replica.url, http))[0]:
            assert time.monotonic() < killed_at + 60, "/readyz not 200 again within 60 s"
            await asyncio.sleep(0.1)
        ready = time.monotonic() - killed_at
    print(f"\n/readyz 503 after {not_ready:.2f} s ({reason}), 200 again after {ready:.2f} s")
    assert alive(replica.pid)


async def test_a_client_resumes_on_a_cluster_with_exactly_what_it_missed(cluster_factory,
                                                                       connect):
    """A room on a master that is neither redis-py's default node nor the
    control channel's: its member on replica-1 leaves (replica-1 drops the
    room's channel), messages go on through replica-2, and the member comes
    back to replica-1 with its resume point."""
    cluster = cluster_factory(replicas=2, mode="pubsub", proxy=False, redis="cluster")
    r1, r2 = cluster.replicas
    room = room_on(plain_master(cluster)[1], "resume")
    sender = await connect(r2.url, "sender", room=room)
    ana = await connect(r1.url, "ana", room=room)
    for n in range(3):
        assert (await sender.send(f"seen {n}"))["ok"]
    await ana.wait_for(lambda: len(ana.messages) == 3, timeout=10)
    epoch, seen = ana.welcome["epoch"], ana.seqs()[-1]
    await ana.sio.disconnect()

    missed = [await sender.send(f"missed {n}") for n in range(5)]
    assert all(ack["ok"] for ack in missed), missed
    back = await connect(r1.url, "ana again", auth={
        "name": "ana", "key": ana.key, "room": room, "resume": {"epoch": epoch, "seq": seen}})
    assert back.welcome["resumed"] is True and back.welcome["gap"] is None
    replayed = back.welcome["history"]
    assert [m["seq"] for m in replayed] == [ack["seq"] for ack in missed]
    assert [m["text"] for m in replayed] == [f"missed {n}" for n in range(5)]

    acks = [await sender.send(f"after {n}") for n in range(3)]
    assert all(ack["ok"] for ack in acks), acks
    after = [ack["seq"] for ack in acks]
    await back.wait_for(lambda: after[-1] in back.seqs(), timeout=10)
    assert back.seqs() == after  # live, none of the replayed ones again
    seqs = ana.seqs() + [m["seq"] for m in replayed] + back.seqs()
    assert seqs == list(range(1, len(seqs) + 1)), seqs
