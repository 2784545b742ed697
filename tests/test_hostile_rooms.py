"""Attacks by one client on rooms and Redis resources (issue 12).

* entering a new room costs one of the address's ``ROOMS_PER_MINUTE`` on a
  replica, and a replica holds at most ``MAX_ROOMS`` rooms with members;
  a refusal leaves the client in its room;
* a room that never had a message keeps only a small meta hash in Redis,
  for minutes, not 30 days (the key sizes are printed for the docs);
* each of a replica's Redis clients holds at most ``REDIS_MAX_CONNECTIONS``
  connections, and a pool that stays exhausted says so in one log line.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal

import aiohttp
import pytest
import redis
from leftovers import ENV, TTL, refused_reason, settle, stays_in, websocket_visit

from chat.redis_keys import RedisKeys

pytestmark = [pytest.mark.slow, pytest.mark.hostile]


async def test_new_rooms_cost_a_token_per_address_and_replica(shared_clusters, connect):
    replicas = shared_clusters(replicas=2, mode="pubsub", proxy=False,
                               env={"ROOMS_PER_MINUTE": "4"}).replicas
    tag = secrets.token_hex(3)
    home = await connect(replicas[0].url, "home", room=f"{tag}-0")  # the first new room
    for i in range(1, 4):
        assert await refused_reason(replicas[0].url, f"{tag}-{i}") is None
    reason = await refused_reason(replicas[0].url, f"{tag}-4")
    assert reason is not None and "too many new rooms" in reason
    ack = await home.sio.call("join", {"room": f"{tag}-5"}, timeout=5)
    assert ack["ok"] is False and "too many new rooms" in ack["error"]
    await stays_in(home, f"{tag}-0")
    # Rooms entered within the minute cost nothing again (reconnections).
    assert await refused_reason(replicas[0].url, f"{tag}-1") is None
    ack = await home.sio.call("join", {"room": f"{tag}-2"}, timeout=5)
    assert ack["ok"] is True
    # Counted per replica: the other one has its own allowance.
    assert await refused_reason(replicas[1].url, f"{tag}-6") is None


async def test_live_rooms_are_capped_per_replica(shared_clusters, connect):
    replica = shared_clusters(replicas=1, mode="pubsub", proxy=False,
                              env={"MAX_ROOMS": "3"}).replicas[0]
    tag = secrets.token_hex(3)
    first = await connect(replica.url, "first", room=f"{tag}-a")
    await connect(replica.url, "second", room=f"{tag}-b")
    third = await connect(replica.url, "third", room=f"{tag}-c")
    reason = await refused_reason(replica.url, f"{tag}-d")
    assert reason is not None and "too many rooms" in reason
    ack = await first.sio.call("join", {"room": f"{tag}-d"}, timeout=5)
    assert ack["ok"] is False and "too many rooms" in ack["error"]
    await stays_in(first, f"{tag}-a")
    # A room that has people here may always be entered.
    assert await refused_reason(replica.url, f"{tag}-b") is None
    # A room nobody is in any more no longer counts.
    await third.sio.disconnect()
    assert await refused_reason(replica.url, f"{tag}-d") is None


def room_keys(admin, room: str) -> dict[str, tuple[int, int]]:
    """Each existing key of ``room``: (MEMORY USAGE bytes, TTL in seconds)."""
    out = {}
    for kind in ("meta", "log", "ids", "presence"):
        key = getattr(RedisKeys("chat:messages"), f"room_{kind}")(room)
        if admin.exists(key):
            out[kind] = (admin.memory_usage(key, samples=0), admin.ttl(key))
    return out


async def test_a_room_without_messages_leaves_nothing_lasting(shared_clusters, connect, mode):
    from chat.history import EMPTY_EXPIRY_MS, IDLE_EXPIRY_MS

    cluster = shared_clusters(replicas=3, mode=mode, proxy=False, env=ENV)
    room = f"empty-{secrets.token_hex(3)}"
    admin = redis.Redis.from_url(cluster.redis_url)
    try:
        visitor = await connect(cluster.replicas[0].url, "visitor", room=room)
        empty = room_keys(admin, room)
        assert set(empty) == {"meta", "presence"}
        assert 0 < empty["meta"][1] <= EMPTY_EXPIRY_MS / 1000
        assert 0 < empty["presence"][1] <= 3 * TTL
        assert (await visitor.send("x" * 100))["ok"]
        written = room_keys(admin, room)
        for kind in ("meta", "log", "ids"):
            assert written[kind][1] > EMPTY_EXPIRY_MS / 1000
            assert written[kind][1] <= IDLE_EXPIRY_MS / 1000
        await visitor.sio.disconnect()
        await settle(lambda: "presence" not in room_keys(admin, room))
        left = room_keys(admin, room)
    finally:
        admin.close()
    print(f"\n{mode}: room keys (bytes, ttl s): empty {empty}; one message {written}; "
          f"after leaving {left}")
    assert set(left) == {"meta", "log", "ids"}


def connections_by_replica(admin, replicas) -> dict[str, int]:
    """Redis connections per replica, by the client names the replicas use."""
    clients = admin.client_list()
    return {r.server_id: sum(c.get("name", "").startswith(f"chat:{r.server_id}:")
                             for c in clients) for r in replicas}


POOL = 4


async def test_redis_connections_per_replica_are_bounded(shared_clusters, mode):
    cluster = shared_clusters(replicas=3, mode=mode, proxy=False,
                              env={"REDIS_MAX_CONNECTIONS": str(POOL)})
    replicas = cluster.replicas
    room = f"pool-{secrets.token_hex(3)}"
    admin = redis.Redis.from_url(cluster.redis_url)
    peak = {r.server_id: 0 for r in replicas}

    async def watch():
        while True:
            for name, count in connections_by_replica(admin, replicas).items():
                peak[name] = max(peak[name], count)
            await asyncio.sleep(0.05)

    async def visits(worker: int):
        async with aiohttp.ClientSession() as session:
            for i in range(10):
                await websocket_visit(session, replicas[(worker + i) % 3].url,
                                      f"p{worker}-{i}", room)

    watcher = asyncio.ensure_future(watch())
    try:
        # 300 connects, 30 at a time; each is a few Redis round trips.
        results = await asyncio.gather(*(visits(w) for w in range(30)),
                                       return_exceptions=True)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        after = connections_by_replica(admin, replicas)
        admin.close()
    print(f"\n{mode}: Redis connections per replica, peak {peak}, after {after} "
          f"(REDIS_MAX_CONNECTIONS={POOL}: two pools per replica)")
    assert [r for r in results if r is not None] == []  # every connect welcomed
    assert all(0 < n <= 2 * POOL for n in peak.values()), peak


async def test_an_exhausted_pool_says_so(cluster_factory, connect, mode):
    cluster = cluster_factory(replicas=1, mode=mode, proxy=False,
                              env={"REDIS_MAX_CONNECTIONS": str(POOL)})
    replica = cluster.replicas[0]
    clients = [await connect(replica.url, f"w{i}") for i in range(30)]
    # Redis stalls (SIGSTOP): the pool's connections stay busy, the rest
    # must wait.  It stays stopped until every ack is in, however long a
    # loaded machine takes: a fixed 6 s CLIENT PAUSE once ended just as one
    # send reached Redis, which stored it and truthfully acked it ok.
    os.kill(cluster.redis.pid, signal.SIGSTOP)
    try:
        acks = await asyncio.gather(*(c.send("in the stall", timeout=25) for c in clients))
    finally:
        os.kill(cluster.redis.pid, signal.SIGCONT)
    log = (cluster.logs / f"{replica.server_id}.log").read_text()
    lines = [line for line in log.splitlines() if "Redis pool exhausted" in line]
    print(f"\n{mode}: {sum(not a['ok'] for a in acks)} of {len(acks)} refused; "
          f"pool lines: {lines[:1]}")
    assert all(a["ok"] is False for a in acks)
    assert 1 <= len(lines) <= 2
    assert f"all {POOL} Redis connections" in lines[0]
    assert "Traceback" not in log


def test_the_room_gate_counts_distinct_rooms_per_address_within_a_minute():
    from chat.protocol import ProtocolError
    from chat.rooms import MAX_ADDRESSES, RoomGate

    live: set[str] = set()
    gate = RoomGate(2, 3, occupied=live.__contains__, live=live.__len__)
    gate.admit("a", "r1", now=0)
    gate.admit("a", "r2", now=1)
    gate.admit("a", "r1", now=2)  # again within the minute: free
    with pytest.raises(ProtocolError, match="new rooms"):
        gate.admit("a", "r3", now=3)
    gate.admit("b", "r3", now=3)  # another address
    gate.admit("a", "r3", now=61.5)  # r2's minute is over (r1's was renewed at 2)
    with pytest.raises(ProtocolError, match="new rooms"):
        gate.admit("a", "r4", now=61.5)
    live.update({"x", "y", "z"})
    with pytest.raises(ProtocolError, match="too many rooms"):
        gate.admit("c", "new", now=63)
    gate.admit("c", "x", now=63)  # it has members: always open
    for i in range(MAX_ADDRESSES + 10):
        gate.admit(f"10.0.{i}", "x", now=64)
    assert len(gate.recent) == MAX_ADDRESSES
