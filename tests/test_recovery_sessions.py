"""Who may claim a recoverable session, against a real redis-server: the
rules of ``chat/recovery.py`` one by one, with two replicas' ``Recovery``
objects sharing one Redis (the end-to-end runs with the official client are
in ``test_recovery.py``)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from chat.history import MemoryHistory
from chat.presence import MemoryStore, Presence
from chat.recovery import Recovery, offset, parse_offset
from chat.redis_keys import RedisKeys
from chat.session_store import RedisSessions

LOG = logging.getLogger("test")
KEYS = RedisKeys("test:recovery")
RUNNING: list[asyncio.Task] = []


def test_offsets_read_back_and_junk_is_no_offset():
    assert parse_offset(offset({"seq": 41, "epoch": "ab12cd34"})) == ("ab12cd34", 41)
    for junk in (None, 41, "", "41", "41:", ":ab", "x:ab", "1:a:b", "1:" + "a" * 65,
                 "9" * 17 + ":ab", "-1:ab", "1:ab cd"):
        assert parse_offset(junk) is None, junk


class Replica:
    """What a replica holds for recovery: its sessions and presence."""

    def __init__(self, client, name: str, history: MemoryHistory, window: float = 30.0):
        self.events: list[dict] = []

        async def emit(room, event):
            self.events.append(event)

        self.presence = Presence(MemoryStore(), ttl=15.0, emit=emit, logger=LOG)
        self.recovery = Recovery(RedisSessions(client, KEYS, name), window=window,
                                 history=history, presence=self.presence, logger=LOG,
                                 instance=name, limit=100)

    def start(self) -> asyncio.Task:
        """Run its upkeep, as a replica does: it renews its alive key."""
        task = asyncio.ensure_future(self.recovery.run())
        RUNNING.append(task)
        return task

    async def open(self, sid: str, room: str = "r", seq: int = 0, epoch: str = "") -> str:
        """A connection in ``room`` that asked for recovery; its pid."""
        pid = self.recovery.new_pid(sid)
        await self.presence.enter(room, f"seat-{sid}", f"user-{sid}", sid)
        await self.recovery.opened(sid, {
            "sid": sid, "seat": f"seat-{sid}", "user": f"user-{sid}", "name": sid,
            "fold": None, "rooms": None, "room": room, "epoch": epoch, "seq": seq,
            "address": "127.0.0.1"})
        return pid


@pytest.fixture
async def world(redis_factory):
    server = redis_factory()
    client = aioredis.Redis(port=server.port)
    history = MemoryHistory(1000)
    first = await history.tail("r", 0)  # the room's epoch

    def replica(name: str, **kwargs) -> Replica:
        return Replica(client, name, history, **kwargs)

    yield replica, history, first.epoch, client
    for task in RUNNING:
        task.cancel()
    await asyncio.gather(*RUNNING, return_exceptions=True)
    RUNNING.clear()
    await client.aclose()


async def test_a_parked_session_is_claimed_once(world):
    replica, history, epoch, _ = world
    a, b, c = replica("a"), replica("b"), replica("c")
    pid = await a.open("s1", epoch=epoch)
    for n in range(3):
        await history.append("r", {"id": f"m{n}", "text": str(n)})
    assert await a.recovery.closed("s1", "transport close") is True  # parked, seat kept
    assert pid in a.recovery.parked
    b.start()
    await asyncio.sleep(0.1)
    restored = await b.recovery.claim(pid, f"1:{epoch}", "e1")
    assert restored is not None and restored.record["sid"] == "s1"
    assert restored.position == (epoch, 1)  # from the client's offset
    assert await b.recovery.take("s1", "e1") is restored
    # Used: a second client with the same pid gets nothing, at once or later.
    assert await c.recovery.claim(pid, f"1:{epoch}", "e2") is None
    # The parked replica hands the seat over without announcing anything.
    await a.recovery._settle(hold=True)
    await a.presence.flush()
    assert pid not in a.recovery.parked
    assert [e for e in a.events if e["left"]] == []


async def test_a_live_session_is_not_claimed_while_its_replica_lives(world):
    replica, _, epoch, _ = world
    a, b = replica("a"), replica("b")
    pid = await a.open("s1", epoch=epoch)
    upkeep = a.start()
    await asyncio.sleep(0.1)
    assert await b.recovery.claim(pid, None, "e1") is None
    # Its replica stops renewing its alive key (killed): now it can be claimed.
    upkeep.cancel()
    await a.recovery.store.forget_me()
    restored = await b.recovery.claim(pid, None, "e1")
    assert restored is not None and restored.position == (epoch, 0)


async def test_goodbye_forged_and_malformed_pids_are_fresh_sessions(world):
    replica, _, epoch, client = world
    a, b = replica("a"), replica("b")
    pid = await a.open("s1", epoch=epoch)
    assert await a.recovery.closed("s1", "client disconnect") is False  # the seat leaves
    assert await client.exists(KEYS.session(pid)) == 0  # nothing kept for nobody
    assert await b.recovery.claim(pid, None, "e1") is None
    assert await b.recovery.claim("A" * 24, None, "e1") is None
    for bad in (None, 7, "short", "x" * 65, "has space in it ......", {"pid": 1}):
        assert await b.recovery.claim(bad, None, "e1") is None


async def test_after_the_window_the_session_is_gone_and_its_seat_leaves(world):
    replica, _, epoch, client = world
    a, b = replica("a", window=0.5), replica("b", window=0.5)
    pid = await a.open("s1", epoch=epoch)
    await a.recovery.closed("s1", "ping timeout")
    await asyncio.sleep(0.7)
    assert await client.exists(KEYS.session(pid)) == 0
    await a.recovery._settle(hold=True)
    await a.presence.flush()
    assert [p["id"] for e in a.events for p in e["left"]] == ["user-s1"]
    assert await b.recovery.claim(pid, None, "e1") is None


async def test_replay_starts_where_the_client_stopped_or_where_it_entered(world):
    replica, history, epoch, _ = world
    a, b = replica("a"), replica("b")
    for n in range(5):
        await history.append("r", {"id": f"m{n}", "text": str(n)})
    cases = [(f"4:{epoch}", 4),  # its last offset
             (f"1:{epoch}", 3),  # before it entered: where it entered
             ("4:other", 3),  # another room's (before a join): where it entered
             (None, 3)]  # it never saw a message
    for n, (sent, expected) in enumerate(cases):
        pid = await a.open(f"s{n}", seq=3, epoch=epoch)
        await a.recovery.closed(f"s{n}", "transport close")
        restored = await b.recovery.claim(pid, sent, f"e{n}")
        assert restored is not None and restored.position == (epoch, expected), sent


async def test_no_claim_when_the_history_no_longer_holds_what_was_missed(world):
    replica, _, _, _ = world
    short = MemoryHistory(3)
    epoch = (await short.tail("r", 0)).epoch
    a, b = replica("a"), replica("b")
    a.recovery.history = b.recovery.history = short
    pid = await a.open("s1", epoch=epoch)
    for n in range(5):  # two more than the history keeps
        await short.append("r", {"id": f"m{n}", "text": str(n)})
    await a.recovery.closed("s1", "transport close")
    assert await b.recovery.claim(pid, f"0:{epoch}", "e1") is None
    # The room's history was reset (another epoch) since it entered.
    pid = await a.open("s2", seq=5, epoch="stale")
    await a.recovery.closed("s2", "transport close")
    assert await b.recovery.claim(pid, "5:stale", "e2") is None
    # And with all of it still there, the same claim works.
    pid = await a.open("s3", seq=3, epoch=epoch)
    await a.recovery.closed("s3", "transport close")
    assert await b.recovery.claim(pid, f"3:{epoch}", "e3") is not None
