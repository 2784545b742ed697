"""Presence: who is online in each room, across every replica.

A person is a user id (``auth.py``: the token's ``sub``, or in open mode a
hash of the client's key) and a name; two tabs of one user are one person
with two connections, and both are counted.  Each connection in a room is an
entry in Redis scored by the time (ms) it expires, beside the person's own
entry and a count of the person's connections (``presence_store.py`` has
the keys and the scripts).  The replica holding the connection refreshes
the expiry of all its entries every ``PRESENCE_TTL / 3`` seconds, so
entries of a replica that crashed stop being refreshed and expire.  The
room's keys go when their last entry does, or 3 x ``PRESENCE_TTL`` after the
last refresh; the same refresh keeps the room's history meta hash alive
while the room has members (``history.py``: an empty room's keys expire
soon).  ``occupancy`` counts this replica's connections per room, for the
room limits (``rooms.py``).

In open mode a connection's name is also claimed, by its fold
(``names.py``): a connection whose name looks like that of another person
live in the room is refused (:class:`NameTaken`).

Who tells the room that someone arrived or left: the replica whose script
call added the person's first connection, or removed its last one (a clean
disconnect or a room change); after a crash, every replica, every refresh
period, retires the expired entries of the rooms it has members in, in one
script, so each is retired (and announced) by exactly one replica.

A refresh writes a snapshot of this replica's entries; a connection that
leaves while that write is on its way would be written back, so after each
room's write the refresh removes again the connections that are no longer
there (removing is idempotent, and announces nothing the second time).

Changes go to the room as ``presence`` events, ``{room, joined, left,
count, connections}``, where ``joined`` and ``left`` are lists of people
``{id, name}``, to be applied in that order, ``count`` the people and
``connections`` the connections live when the event was sent.  A replica
sends the first change after a quiet spell at once, then gathers the changes
of the next ``BATCH`` seconds into one event per room: when a thousand
clients reconnect at once, the room gets a few events listing many people
instead of a thousand events each sent to a thousand members.  A client
whose list has another size than ``count`` asks for the whole list again
(``presence`` request), which also repairs a list that missed an event
while the backplane was down.  Lists are capped at ``LIST_MAX`` people,
with the room's full count beside them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from .presence_memory import MemoryStore
from .presence_store import ARRIVED, REFUSED, RedisStore, Seat, entry, person
from .protocol import ProtocolError

__all__ = ["MemoryStore", "NameTaken", "Presence", "RedisStore", "Seat", "entry"]

BATCH = 0.25  # seconds of changes per room gathered into one presence event
# The most entries a welcome or a presence answer lists.  Every member of a
# room gets the list when it (re)connects: with 5,000 members a full list
# each would be 5,000 x 5,000 entries after a mass reconnection.
LIST_MAX = 200


class NameTaken(ProtocolError):
    """Open mode: someone live in the room has a name that looks the same."""


class Presence:
    """This replica's side of presence: its members' entries, the refresh
    and expiry loop, and the batched ``presence`` events."""

    def __init__(self, store, *, ttl: float,
                 emit: Callable[[str, dict], Awaitable[None]], logger: logging.Logger):
        self.store = store
        self.ttl = ttl
        self.emit = emit  # emit(room, event): to the room on every replica
        self.log = logger
        self.local: dict[str, tuple[str, Seat]] = {}  # connection -> (room, seat), ours
        # connection -> its entries' life, for the ones that outlive a crash
        # longer than ``ttl`` (a stock client's session: recovery.py).
        self.lasting: dict[str, float] = {}
        self.occupancy: collections.Counter[str] = collections.Counter()  # room -> ours
        self._changes: dict[str, tuple[dict, dict]] = {}  # room -> (joined, left)
        self._flusher: asyncio.Task | None = None
        self._flushed_at = 0.0
        self._failing = False

    # -- changes made by this replica's clients ------------------------------
    async def enter(self, room: str, conn: str, user: str, name: str,
                    fold: str | None = None, ttl: float | None = None) -> None:
        """Seat connection ``conn`` of person ``user`` in ``room``; with
        ``fold`` (open mode), refuse it with :class:`NameTaken` when another
        live person's name there looks the same.  ``ttl``: how long its
        entry outlives this replica, when longer than the others'."""
        self._forget(conn)
        seat = Seat(conn, entry(user, name), fold or "")
        now = time.time()
        try:
            status, holder = await self.store.add(room, seat, now + (ttl or self.ttl), now,
                                                  claim=bool(fold))
        except (OSError, RedisError) as exc:
            # Redis down must not stop a connect: the next refresh writes
            # the entry (names cannot be compared meanwhile).
            self.log.debug("presence: %s", exc)
            status = ARRIVED
        if status == REFUSED:
            raise NameTaken(f"name {name!r} is taken in {room!r}: "
                            f"{person(holder)['name']!r} is there and looks the same")
        self.local[conn] = (room, seat)
        if ttl:
            self.lasting[conn] = ttl
        self.occupancy[room] += 1
        if status == ARRIVED:
            self._changed(room, joined={user: name})

    async def leave(self, conn: str) -> None:
        room, seat = self._forget(conn)
        if room is None:
            return
        try:
            left = await self.store.remove(room, seat)
        except (OSError, RedisError) as exc:
            self.log.debug("presence: %s", exc)
            left = True  # a wrong guess is repaired by the clients' count check
        if left:
            who = person(seat.person)
            self._changed(room, left={who["id"]: who["name"]})

    # -- seats of parked sessions (recovery.py) ------------------------------
    def park(self, conn: str) -> tuple[str | None, Seat | None]:
        """Hand ``conn``'s seat over to the recovery, which keeps it while
        its client may come back (:meth:`hold`) or gives it up (:meth:`release`)."""
        return self._forget(conn)

    async def hold(self, seats: list[tuple[str, Seat]], ttl: float) -> None:
        """Push on the expiry of parked seats, as the refresh does for live ones."""
        now = time.time()
        rooms: dict[str, list[Seat]] = {}
        for room, seat in seats:
            rooms.setdefault(room, []).append(seat)
        if rooms:
            await self.store.add_rooms(rooms, now + ttl, now)

    async def release(self, room: str, seat: Seat) -> None:
        """A parked seat's session ended: it leaves, announced if it was the
        person's last connection."""
        if await self.store.remove(room, seat):
            who = person(seat.person)
            self._changed(room, left={who["id"]: who["name"]})

    def _forget(self, conn: str) -> tuple[str | None, Seat | None]:
        room, seat = self.local.pop(conn, (None, None))
        self.lasting.pop(conn, None)
        if room is not None:
            self.occupancy[room] -= 1
            if self.occupancy[room] <= 0:
                del self.occupancy[room]
        return room, seat

    async def members(self, room: str, strict: bool = False) -> tuple[list[dict], int, int]:
        """Who is in ``room`` on any replica (at most ``LIST_MAX`` people),
        how many people, and how many connections.  If Redis does not answer:
        this replica's own members only, or with ``strict`` the error."""
        try:
            raw, count, connections = await self.store.live(room, time.time(), LIST_MAX)
            people = [person(e) for e in raw]
        except (OSError, RedisError):
            if strict:
                raise
            seats = [seat for r, seat in self.local.values() if r == room]
            people = [person(e) for e in dict.fromkeys(seat.person for seat in seats)]
            count, connections = len(people), len(seats)
            people = people[:LIST_MAX]
        return sorted(people, key=lambda p: (p["name"], p["id"])), count, connections

    async def rooms(self, limit: int) -> list[tuple[str, int]]:
        """Rooms with people in them on any replica, and how many (raises
        when Redis does not answer)."""
        return await self.store.rooms(time.time(), limit)

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
                _, count, connections = await self.store.live(where, now, 0)
            except (OSError, RedisError):
                count = connections = None
            event = {
                "room": where,
                "joined": [{"id": p, "name": n} for p, n in joined.items()],
                "left": [{"id": p, "name": n} for p, n in left.items()],
                "count": count,
                "connections": connections,
            }
            try:
                await self.emit(where, event)
            except Exception as exc:  # the backplane has logged why
                self.log.debug("presence event for %r not relayed: %s", where, exc)

    # -- refresh and expiry ---------------------------------------------------
    async def refresh(self) -> None:
        """Extend our entries' lives, and retire everyone else's dead ones."""
        now = time.time()
        lives: dict[float, dict[str, list[Seat]]] = {}  # life -> room -> seats
        for conn, (room, seat) in list(self.local.items()):
            rooms = lives.setdefault(self.lasting.get(conn, self.ttl), {})
            rooms.setdefault(room, []).append(seat)
        if not lives:
            return
        # Every room's seats in one pipeline (the store batches them), not a
        # round trip per room: with a hundred rooms per replica this loop was
        # most of an idle replica's CPU.  (One per life: the seats of
        # sessions that asked for recovery outlive a crash longer.)
        for ttl, rooms in lives.items():
            await self.store.add_rooms(rooms, now + ttl, now)
        # Whoever left (or moved) since the snapshot was just written back
        # by that add, which may even have reached Redis after the
        # departure's removal: remove them again, now that the add is done.
        every = list(dict.fromkeys(room for rooms in lives.values() for room in rooms))
        for rooms in lives.values():
            for room, seats in rooms.items():
                for seat in seats:
                    if self.local.get(seat.conn) != (room, seat):
                        await self.store.remove(room, seat)
        expired = await self.store.expire_rooms(every, now)
        for room, entries in zip(every, expired, strict=True):
            gone = [person(e) for e in entries]
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

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await self.flush()
