"""Where recoverable sessions live: one record per private session id
(``pid``), in Redis or in this process (``recovery.py`` decides what they
mean).

Keys (``redis_keys.py``)::

    C:session:P      string  the session record of pid P (JSON, below)
    C:alive:I        string  replica instance I is running; 2 s, renewed every 0.5 s

A record says who the connection was and where it stood::

    {"sid", "seat", "user", "name", "fold", "rooms", "room", "epoch", "seq",
     "address", "owner", "state"}

``state`` is ``live`` while replica instance ``owner`` holds the connection,
``parked`` once that replica saw it close in a way the client comes back
from (a lost transport, a ping timeout, a drain).  A live record is
refreshed by its owner and outlives it by the window, so the record of a
replica that was killed is still there for its clients to claim elsewhere.

Every change to a record is a compare-and-swap on its whole text (``SWAP``),
so two replicas that claim one pid at once cannot both win: the first
rewrites the record, the second finds it changed and gets nothing.
"""

from __future__ import annotations

import time

from .history import as_text
from .redis_keys import RedisKeys

ALIVE_TTL = 2.0  # seconds a replica's alive key outlives its last renewal
BEAT = 0.5  # seconds between renewals

SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) return 1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class RedisSessions:
    def __init__(self, client, keys: RedisKeys, instance: str):
        self.redis = client
        self.keys = keys
        self.instance = instance
        self._swap = client.register_script(SWAP)

    async def get(self, pid: str) -> str | None:
        value = await self.redis.get(self.keys.session(pid))
        return None if value is None else as_text(value)

    async def put(self, pid: str, record: str, ttl: float) -> None:
        await self.redis.set(self.keys.session(pid), record, px=int(ttl * 1000))

    async def swap(self, pid: str, old: str, new: str | None, ttl: float = 0) -> bool:
        """Replace (or with ``new`` None, delete) the record if it still reads ``old``."""
        key = self.keys.session(pid)
        return bool(await self._swap(keys=[key], args=[old, new or "", int(ttl * 1000)]))

    async def delete(self, pid: str) -> None:
        await self.redis.delete(self.keys.session(pid))

    async def touch(self, pids: list[str], ttl: float) -> None:
        """Push on the expiry of these live records, in one pipelined trip."""
        if not pids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.pexpire(self.keys.session(pid), int(ttl * 1000))
            await pipe.execute()

    async def read(self, pids: list[str]) -> list[str | None]:
        if not pids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.get(self.keys.session(pid))
            values = await pipe.execute()
        return [None if v is None else as_text(v) for v in values]

    async def beat(self) -> None:
        await self.redis.set(self.keys.alive(self.instance), "1", px=int(ALIVE_TTL * 1000))

    async def gone(self, instance: str) -> bool:
        """Replica ``instance`` has not renewed its alive key for ALIVE_TTL."""
        return not await self.redis.exists(self.keys.alive(instance))

    async def forget_me(self) -> None:
        await self.redis.delete(self.keys.alive(self.instance))


class MemorySessions:
    """The single node's records: the same operations on a dict."""

    def __init__(self, instance: str):
        self.instance = instance
        self.records: dict[str, tuple[str, float]] = {}  # pid -> (record, expires at)

    def _live(self, pid: str) -> str | None:
        record, until = self.records.get(pid, (None, 0.0))
        if record is not None and until <= time.monotonic():
            del self.records[pid]
            return None
        return record

    async def get(self, pid: str) -> str | None:
        return self._live(pid)

    async def put(self, pid: str, record: str, ttl: float) -> None:
        self.records[pid] = (record, time.monotonic() + ttl)

    async def swap(self, pid: str, old: str, new: str | None, ttl: float = 0) -> bool:
        if self._live(pid) != old:
            return False
        if new is None:
            del self.records[pid]
        else:
            self.records[pid] = (new, time.monotonic() + ttl)
        return True

    async def delete(self, pid: str) -> None:
        self.records.pop(pid, None)

    async def touch(self, pids: list[str], ttl: float) -> None:
        for pid in pids:
            record = self._live(pid)
            if record is not None:
                self.records[pid] = (record, time.monotonic() + ttl)

    async def read(self, pids: list[str]) -> list[str | None]:
        return [self._live(pid) for pid in pids]

    async def beat(self) -> None:
        for pid in [p for p, (_, until) in self.records.items() if until <= time.monotonic()]:
            del self.records[pid]

    async def gone(self, instance: str) -> bool:
        return instance != self.instance  # one node: only this one ever lived

    async def forget_me(self) -> None:
        return None
