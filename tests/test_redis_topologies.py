"""The store on every Redis topology: hash tags, Cluster, Sentinel, WAIT.

The history, presence and replica registry run unchanged on one Redis, on a
Sentinel-watched master and on a Cluster, through the client
``chat/redis_clients.py`` builds from the URL.  On a Cluster every command,
script and transaction touching a room must stay in the room's slot, and the
catch-up's read of many rooms must reach every master: here the rooms are
spread over all three.  Real redis-server processes (``redis_sentinel``,
``redis_cluster`` in conftest.py).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import signal
import time
from types import SimpleNamespace

import pytest
from cluster_slots import masters_or_none, node_named, plain_master
from redis.crc import key_slot

from chat.backplane import shards
from chat.backplane.shards import Shards
from chat.history import HistoryNotReplicated, RedisHistory
from chat.metrics import Metrics
from chat.presence_store import ARRIVED, RedisStore, Seat, entry
from chat.redis_clients import redis_client
from chat.redis_keys import RedisKeys, hash_tag
from chat.replicas import Registry
from chat.tools.cluster import LocalCluster
from chat.tools.processes import alive, free_port

KEYS = RedisKeys("chat:messages")
ODD_ROOMS = ["general", "}x", "{a}b", "a}b", "a%7Db", "%", "{}", "ünï cödé", "x" * 32]


def room_names(room: str) -> dict[str, str]:
    """Every name ``RedisKeys`` gives a room (its keys and its channel): each
    public method that takes a room, so a key added there is covered here."""
    return {name: getattr(KEYS, name)(room) for name, member in vars(RedisKeys).items()
            if not name.startswith("_") and callable(member)
            and list(inspect.signature(member).parameters) == ["self", "room"]}


def test_the_room_names_are_all_found():
    assert {"room_channel", "room_meta", "room_log", "room_ids", "room_presence",
            "room_connections", "room_counts", "room_names"} <= set(room_names("r"))


@pytest.mark.parametrize("room", ODD_ROOMS)
def test_every_key_of_a_room_is_in_one_slot(room):
    names = room_names(room)
    # the slot of each is the tag's: the tag is whole, not cut at a brace.
    slots = {name: key_slot(key.encode()) for name, key in names.items()}
    assert set(slots.values()) == {key_slot(hash_tag(room).encode())}, (names, slots)


def test_distinct_rooms_get_distinct_tags():
    assert len({hash_tag(room) for room in ODD_ROOMS}) == len(ODD_ROOMS)


async def append(history: RedisHistory, room: str, message: dict) -> dict:
    """Append as a client does: an ack saying the replicas did not confirm
    in time (a loaded machine, seen in CI) is answered by sending the same
    id again, which finds it stored and answers with its number."""
    for _ in range(5):
        try:
            return await history.append(room, dict(message))
        except HistoryNotReplicated:
            await asyncio.sleep(0.2)
    pytest.fail(f"no Redis replica confirmed {message['id']} in five tries")


async def exercise_the_store(url: str, wait_replicas: int, rooms: list[str]) -> dict:
    """Every store operation a replica makes, on ``url``; returns what the
    rooms' heads say (room -> latest number)."""
    client = redis_client(url, "chat:test:store", 8)
    try:
        history = RedisHistory(client, keys=KEYS, length=5, wait_replicas=wait_replicas)
        for room in rooms:
            for i in range(3):
                stored = await append(history, room, {"id": f"{room}-{i}", "text": str(i)})
                assert stored["seq"] == i + 1
            again = await append(history, room, {"id": f"{room}-1", "text": "1"})
            assert again["duplicate"] and again["seq"] == 2
            piece = await history.tail(room, 10)
            assert [m["seq"] for m in piece.messages] == [1, 2, 3] and piece.last == 3
            assert [m["seq"] for m in (await history.since(room, 1, 10)).messages] == [2, 3]
            assert [m["seq"] for m in await history.between(room, 0, 3)] == [1, 2]
        heads = await history.heads([*rooms, "never-used"])  # one pipeline, many rooms

        store = RedisStore(client, keys=KEYS, ttl=3)
        now = time.time()
        ana, bia, gone = (Seat(f"c{i}", entry(f"u{i}", name), name) for i, name in
                          enumerate(("ana", "bia", "gone")))
        for room in rooms:
            for seat in (ana, bia):
                assert (await store.add(room, seat, now + 60, now, claim=True))[0] == ARRIVED
            await store.add_many(room, [gone], now - 1, now)
            assert (await store.live(room, now, 10))[1:] == (2, 2)
            assert await store.expire(room, now) == [gone.person]
            await store.remove(room, bia)
            assert await store.live(room, now, 10) == ([ana.person], 1, 1)
        assert sorted(r for r, _ in await store.rooms(now, 1000)) == sorted(rooms)

        async def status():
            return {"mode": "pubsub", "clients": 0, "ready": True, "reason": "test"}

        registry = Registry(client, key=KEYS.replicas, server_id="replica-9", ttl=3,
                            status=status, logger=None)
        await registry.publish()
        assert [e["server"] for e in await registry.list()] == ["replica-9"]
        return {room: seq for room, (_, seq) in heads.items()}
    finally:
        await client.aclose()


async def test_the_store_works_on_a_cluster_with_rooms_on_every_master(redis_cluster):
    rooms = [f"room-{i}-{secrets.token_hex(2)}" for i in range(24)] + ["}x", "a}b"]
    masters = {row[0] for row in redis_cluster.rows() if row[3] == "master"}
    client = redis_client(redis_cluster.url, "chat:test:where", 2)
    try:
        await client.initialize()
        owners = {client.get_node_from_key(KEYS.room_meta(r)).port for r in rooms}
    finally:
        await client.aclose()
    assert len(owners) == len(masters) == 3, "the rooms do not span the three masters"

    heads = await exercise_the_store(redis_cluster.url, 1, rooms)
    assert heads == dict.fromkeys(rooms, 3)


async def test_the_store_works_through_sentinel(redis_sentinel):
    rooms = ["general", "}x"]
    assert await exercise_the_store(redis_sentinel.url, 1, rooms) == dict.fromkeys(rooms, 3)


async def test_an_append_no_replica_confirmed_is_stored_and_says_so(redis_factory):
    redis = redis_factory()  # no replica at all: WAIT 1 can only time out
    client = redis_client(redis.url, "chat:test:wait", 4)
    try:
        history = RedisHistory(client, keys=KEYS, length=10, wait_replicas=1)
        with pytest.raises(HistoryNotReplicated, match="0 of the 1 Redis replica"):
            await history.append("r", {"id": "m-1", "text": "hi"})
        # Stored on the master all the same: a retry finds it, once.
        assert [m["id"] for m in (await history.tail("r", 10)).messages] == ["m-1"]
        with pytest.raises(HistoryNotReplicated):
            await history.append("r", {"id": "m-1", "text": "hi"})
        assert (await history.tail("r", 10)).last == 1
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_history_survives_a_redis_crash_with_aof(cluster_factory, connect):
    """make up's single Redis keeps an append-only file: SIGKILLed (no
    shutdown save) more than a second after the messages, it comes back
    with the room's history, epoch and numbering."""
    cluster = cluster_factory(replicas=1, mode="pubsub", proxy=False)
    url = cluster.replicas[0].url
    ana = await connect(url, "ana", room="kept")
    acks = [await ana.send(f"m{i}") for i in range(5)]
    assert all(a["ok"] for a in acks)
    await asyncio.sleep(1.5)  # appendfsync everysec
    cluster.redis.stop(signal.SIGKILL)
    cluster.start_redis()
    bia = await connect(url, "bia", room="kept")
    assert [m["text"] for m in bia.welcome["history"]] == [f"m{i}" for i in range(5)]
    assert bia.welcome["epoch"] == ana.welcome["epoch"]
    assert (await bia.send("after"))["seq"] == 6


def test_chat_cluster_runs_pubsub_replicas_on_a_redis_cluster_and_stops_every_node(tmp_path):
    cluster = LocalCluster(tmp_path / "run")
    try:
        cluster.up(replicas=1, mode="pubsub", port=free_port(), proxy=False, redis="cluster")
        roles = [role for name, _, _, role in cluster.status() if name.startswith("redis")]
        assert sorted(roles) == ["master"] * 3 + ["replica"] * 3
        pids = cluster.topology.pids()
    finally:
        cluster.down()
    assert not cluster.running()
    assert not any(alive(pid) for pid in pids)



async def test_readiness_on_a_cluster_follows_its_state_through_a_failover(redis_cluster,
                                                                          monkeypatch):
    """The pubsub mode's shard links (``backplane/shards.py``) hold only the
    control channel here, so a master with none of them dying is seen only
    through CLUSTER INFO: not ready while the Cluster says ``fail`` (a master
    marked failed, its replica not yet promoted), ready again after."""
    monkeypatch.setattr(shards, "CLUSTER_STATE_EVERY", 0)  # each poll asks (in-process)
    client = redis_client(redis_cluster.url, "chat:test:ready", 4)
    links = Shards(client, "chat:test:ready", KEYS.channel, Metrics("t", "pubsub"),
                   logging.getLogger("test"), on_confirmed=lambda rooms: None)
    reader = asyncio.ensure_future(anext(links.messages()))
    found = SimpleNamespace(topology=redis_cluster)
    victim, _ = plain_master(found)  # no link there, and not where CLUSTER INFO goes

    def failed_over() -> bool:
        now = masters_or_none(found)
        return len(now) == 3 and victim not in now

    try:
        deadline = time.monotonic() + 30
        while not (await links.ready())[0]:
            assert time.monotonic() < deadline, await links.ready()
            await asyncio.sleep(0.05)
        assert client.get_default_node().port != victim
        redis_cluster.kill(node_named(found, victim))
        deadline = time.monotonic() + 60
        while (answer := await links.ready())[0]:
            assert not failed_over(), "the failover completed while ready"
            assert time.monotonic() < deadline, "ready for 60 s"
            await asyncio.sleep(0.05)
        assert "cluster_state:fail" in answer[1], answer
        while not (await links.ready())[0]:
            assert time.monotonic() < deadline, "not ready again within 60 s"
            await asyncio.sleep(0.1)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await links.close()
        await client.aclose()
