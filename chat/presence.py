"""Presence: who is online in each room, across every replica.

Each connection in a room is an entry ``[id, name]`` in the room's Redis
sorted set ``C:room:{R}:presence``, scored by the time (ms) it expires.  The
replica holding the connection refreshes the expiry of all its entries every
``PRESENCE_TTL / 3`` seconds, so entries of a replica that crashed stop
being refreshed and expire.  ``id`` is a random tag per connection, not the
Socket.IO sid: one person with two tabs is two entries with one name.  The
set itself goes when its last entry does, or 3 x ``PRESENCE_TTL`` after the
last refresh; the same refresh keeps the room's history meta hash alive while
the room has members (``history.py``: an empty room's keys expire soon).
``occupancy`` counts this replica's members per room, for the room limits
(``rooms.py``).

Who tells the room that someone left:

* a clean disconnect or a room change: the replica holding the connection
  removes its entry at once;
* a crash: every replica, every refresh period, removes the expired entries
  of the rooms it has members in, in one Lua script, so each expired entry
  is removed (and announced) by exactly one replica.

A refresh writes a snapshot of this replica's entries; whoever leaves while
that write is on its way would be written back (and announced as leaving a
second time when the entry expires), so after each room's write the refresh
removes again the entries of members who are no longer there.

Changes go to the room as ``presence`` events, ``{room, joined, left,
count}``, where ``joined`` and ``left`` are lists of ``{id, name}``, to be
applied in that order.  A replica sends the first change after a quiet
spell at once, then gathers the changes of the next ``BATCH`` seconds into
one event per room: when a thousand clients reconnect at once, the room gets
a few events listing many people instead of a thousand events each sent to
a thousand members.  ``count`` is the number of live entries when the event was sent;
a client whose list has another size asks for the whole list again
(``presence`` request), which also repairs a list that missed an event
while the backplane was down.  Lists are capped at ``LIST_MAX`` entries,
with the room's full count beside them.

``MemoryStore`` keeps the same entries in-process for the single node.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from . import jsonio
from .history import EMPTY_EXPIRY_MS, as_text
from .redis_keys import RedisKeys

BATCH = 0.25  # seconds of changes per room gathered into one presence event
# The most entries a welcome or a presence answer lists.  Every member of a
# room gets the list when it (re)connects: with 5,000 members a full list
# each would be 5,000 x 5,000 entries after a mass reconnection.
LIST_MAX = 200
EXPIRE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) end
return gone
"""


class MemoryStore:
    def __init__(self):
        self.rooms: dict[str, dict[str, float]] = {}

    async def add(self, room: str, entries: list[str], expires: float) -> None:
        members = self.rooms.setdefault(room, {})
        for entry in entries:
            members[entry] = expires

    async def remove(self, room: str, entry: str) -> None:
        members = self.rooms.get(room, {})
        members.pop(entry, None)
        if not members:
            self.rooms.pop(room, None)

    async def live(self, room: str, now: float, limit: int) -> tuple[list[str], int]:
        alive = [e for e, expires in self.rooms.get(room, {}).items() if expires > now]
        return alive[:limit], len(alive)

    async def expire(self, room: str, now: float) -> list[str]:
        members = self.rooms.get(room, {})
        gone = [e for e, expires in members.items() if expires <= now]
        for entry in gone:
            del members[entry]
        return gone

class RedisStore:
    def __init__(self, client, *, keys: RedisKeys, ttl: float):
        self.redis = client
        self.keys = keys
        self.key_ttl_ms = int(ttl * 3000)  # a room nobody refreshes goes away
        # While a room has members, its meta hash (history.py) lives on even
        # if nobody ever writes in it.
        self.meta_ttl_ms = max(EMPTY_EXPIRY_MS, self.key_ttl_ms)
        self._expire = client.register_script(EXPIRE)

    def _key(self, room: str) -> str:
        return self.keys.room_presence(room)

    async def add(self, room: str, entries: list[str], expires: float) -> None:
        key = self._key(room)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {entry: expires * 1000 for entry in entries})
            pipe.pexpire(key, self.key_ttl_ms)
            pipe.pexpire(self.keys.room_meta(room), self.meta_ttl_ms, gt=True)
            await pipe.execute()

    async def remove(self, room: str, entry: str) -> None:
        await self.redis.zrem(self._key(room), entry)

    async def live(self, room: str, now: float, limit: int) -> tuple[list[str], int]:
        key, since = self._key(room), f"({now * 1000}"
        async with self.redis.pipeline(transaction=False) as pipe:
            if limit:
                pipe.zrangebyscore(key, since, "+inf", start=0, num=limit)
            pipe.zcount(key, since, "+inf")
            *entries, count = await pipe.execute()
        return [as_text(e) for e in (entries[0] if entries else [])], int(count)

    async def expire(self, room: str, now: float) -> list[str]:
        return [as_text(e) for e in await self._expire(keys=[self._key(room)],
                                                     args=[now * 1000])]



def entry(pid: str, name: str) -> str:
    return jsonio.dumps([pid, name])


def person(raw: str) -> dict:
    pid, name = jsonio.loads_own(raw)
    return {"id": pid, "name": name}


class Presence:
    """This replica's side of presence: its members' entries, the refresh
    and expiry loop, and the batched ``presence`` events."""

    def __init__(self, store, *, ttl: float,
                 emit: Callable[[str, dict], Awaitable[None]], logger: logging.Logger):
        self.store = store
        self.ttl = ttl
        self.emit = emit  # emit(room, event): to the room on every replica
        self.log = logger
        self.local: dict[str, tuple[str, str]] = {}  # id -> (room, name), ours
        self.occupancy: collections.Counter[str] = collections.Counter()  # room -> ours
        self._changes: dict[str, tuple[dict, dict]] = {}  # room -> (joined, left)
        self._flusher: asyncio.Task | None = None
        self._flushed_at = 0.0
        self._failing = False

    # -- changes made by this replica's clients ------------------------------
    async def enter(self, room: str, pid: str, name: str) -> None:
        self._forget(pid)
        self.local[pid] = (room, name)
        self.occupancy[room] += 1
        await self._quietly(self.store.add(room, [entry(pid, name)], time.time() + self.ttl))
        self._changed(room, joined={pid: name})

    async def leave(self, pid: str) -> None:
        room, name = self._forget(pid)
        if room is None:
            return
        await self._quietly(self.store.remove(room, entry(pid, name)))
        self._changed(room, left={pid: name})

    def _forget(self, pid: str) -> tuple[str | None, str | None]:
        room, name = self.local.pop(pid, (None, None))
        if room is not None:
            self.occupancy[room] -= 1
            if self.occupancy[room] <= 0:
                del self.occupancy[room]
        return room, name

    async def members(self, room: str) -> tuple[list[dict], int]:
        """Who is in ``room`` on any replica, at most ``LIST_MAX`` of them,
        and how many there are (this replica's own members only, if Redis
        does not answer)."""
        try:
            raw, count = await self.store.live(room, time.time(), LIST_MAX)
            people = [person(e) for e in raw]
        except (OSError, RedisError):
            people = [{"id": pid, "name": name}
                      for pid, (r, name) in self.local.items() if r == room]
            count = len(people)
            people = people[:LIST_MAX]
        return sorted(people, key=lambda p: (p["name"], p["id"])), count

    # -- batching -------------------------------------------------------------
    def _changed(self, room: str, joined: dict | None = None, left: dict | None = None):
        # Clients apply "joined" before "left".  So a connection that came
        # and went within one batch is in both (anyone who read the list in
        # between must still drop it), and one that left and came back is
        # only in "joined".
        j, lft = self._changes.setdefault(room, ({}, {}))
        for pid, name in (joined or {}).items():
            lft.pop(pid, None)
            j[pid] = name
        for pid, name in (left or {}).items():
            lft[pid] = name
        if self._flusher is None:
            # The first change after a quiet spell goes out at once; the
            # ones that follow within BATCH wait and go out together.
            wait = max(0.0, self._flushed_at + BATCH - time.monotonic())
            self._flusher = asyncio.ensure_future(self._flush_later(wait))

    async def _flush_later(self, wait: float) -> None:
        try:
            await asyncio.sleep(wait)
        finally:
            self._flusher = None
        self._flushed_at = time.monotonic()
        await self.flush()

    async def flush(self, room: str | None = None) -> None:
        """Send the gathered changes now, one event per room (or ``room``'s
        only: before a message is relayed, so that its sender's arrival is
        announced before what it says)."""
        if room is None:
            changes, self._changes = self._changes, {}
        elif room in self._changes:
            changes = {room: self._changes.pop(room)}
        else:
            return
        now = time.time()
        for where, (joined, left) in changes.items():
            try:
                _, count = await self.store.live(where, now, 0)
            except (OSError, RedisError):
                count = None
            event = {
                "room": where,
                "joined": [{"id": p, "name": n} for p, n in joined.items()],
                "left": [{"id": p, "name": n} for p, n in left.items()],
                "count": count,
            }
            try:
                await self.emit(where, event)
            except Exception as exc:  # the backplane has logged why
                self.log.debug("presence event for %r not relayed: %s", where, exc)

    # -- refresh and expiry ---------------------------------------------------
    async def refresh(self) -> None:
        """Extend our entries' lives, and retire everyone else's dead ones."""
        now = time.time()
        rooms: dict[str, dict[str, str]] = {}
        for pid, (room, name) in list(self.local.items()):
            rooms.setdefault(room, {})[pid] = entry(pid, name)
        for room, entries in rooms.items():
            await self.store.add(room, list(entries.values()), now + self.ttl)
            # Whoever left (or moved) since the snapshot was just written
            # back by that add, which may even have reached Redis after the
            # departure's removal: remove them again, now that the add is done.
            for pid, stale in entries.items():
                if self.local.get(pid, (None,))[0] != room:
                    await self.store.remove(room, stale)
            gone = [person(e) for e in await self.store.expire(room, now)]
            if gone:
                self.log.info("presence: %d expired in %r (a replica stopped refreshing)",
                              len(gone), room)
                self._changed(room, left={p["id"]: p["name"] for p in gone})

    async def run(self) -> None:
        """Refresh every third of the TTL, forever (a lifetime task)."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.refresh()
            except (OSError, RedisError) as exc:
                if not self._failing:
                    self.log.warning("presence: refresh failed: %s", exc)
                self._failing = True
                continue
            if self._failing:
                self.log.info("presence: refreshing again")
                self._failing = False

    async def _quietly(self, operation) -> None:
        """Redis being down must not stop a connect or a disconnect: the next
        refresh writes our entries again."""
        try:
            await operation
        except (OSError, RedisError) as exc:
            self.log.debug("presence: %s", exc)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await self.flush()
