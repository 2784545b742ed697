"""In-order, gap-free delivery of chat messages to this replica's clients.

A numbered message (see ``history.py``) can reach a replica by two paths:
its own client's emit, or the backplane from another replica.  Neither path
promises order across replicas (two replicas may number messages 5 and 6
and publish them in the opposite order), and the backplane promises nothing
at all while a subscription is down.  So every chat message for a room this
replica has members in passes through that room's *line*:

* a number at or below the last one delivered is a duplicate: dropped;
* the next number is written to the room's sockets at once, followed by any
  later numbers that were waiting for it (the bookkeeping is the same
  :class:`~chat.history.Cursor` every client session uses);
* a number further ahead waits, and the hole gets ``GAP_WAIT`` to fill from
  the live path (the usual case: the other replica's publish is a
  millisecond behind).  After that the missing numbers are read from the
  room's history.  If the history no longer has them, the line moves on and
  the clients, who check numbers too, are told of the gap when they ask.

A message whose only copy was lost (a replica unsubscribed, the last
message before a quiet spell) leaves no hole to notice, so :meth:`catch_up`
runs every ``CATCH_UP_EVERY`` seconds (the setting of that name; 0 turns
it off, which only tests that measure the live path alone should do): it
reads each room's latest number (one pipelined round trip for all rooms) and
fetches what is still missing from the previous round.

A client that enters a room does so inside the line's lock
(:meth:`Sequencer.entering`): its history is read, it joins the Socket.IO
room and is sent its welcome before any live message of that room can be
written to it.  Live messages it already has from the history are dropped by
the client by number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .cursor import Cursor
from .history import HistoryUnavailable
from .metrics import Metrics

GAP_WAIT = 0.05  # seconds a hole may wait for the live path
FILL_ATTEMPTS = 5  # history reads (with doubling waits) before a hole is given up
CATCH_UP_EVERY = 1.0


class Line:
    """Where one room stands on this replica: a :class:`Cursor` over the
    room's numbers, and what guards and repairs it."""

    __slots__ = ("cursor", "filler", "lock", "seen_head")

    def __init__(self):
        self.cursor = Cursor()  # epoch None until the first member's history is known
        self.lock = asyncio.Lock()
        self.filler: asyncio.Task | None = None
        self.seen_head = 0  # the room's latest number at the previous catch-up

    def restart(self, epoch: str | None, last: int) -> None:
        self.cursor.restart(epoch, last)
        self.seen_head = last


class Sequencer:
    def __init__(self, history, write: Callable[[str, dict], Awaitable[None]],
                 occupied: Callable[[str], bool], metrics: Metrics,
                 logger: logging.Logger, catch_up_every: float = CATCH_UP_EVERY):
        self.history = history
        self.catch_up_every = catch_up_every
        self.write = write  # write(room, message): to this replica's sockets in room
        self.occupied = occupied  # occupied(room): has this replica members in it?
        self.metrics = metrics
        self.log = logger
        self.lines: dict[str, Line] = {}

    # -- a member enters ----------------------------------------------------
    @contextlib.asynccontextmanager
    async def entering(self, room: str):
        """Hold ``room``'s line while a client is given its history and
        joins; yield a function ``start(epoch, last)`` to call with the
        position of the history it was given (epoch None: unknown).  It
        returns where the line stands then, ``(epoch, last written)``: the
        live messages the client gets are the ones after that."""
        line = self.lines.setdefault(room, Line())
        async with line.lock:
            alone = not self.occupied(room)

            def start(epoch: str | None, last: int) -> tuple[str | None, int]:
                # Members already here set the pace; a first member starts
                # the line where its history ends.
                if alone or line.cursor.epoch is None:
                    line.restart(epoch, last)
                return line.cursor.epoch, line.cursor.seq

            yield start

    # -- a message arrives --------------------------------------------------
    async def accept(self, room: str, message: dict) -> None:
        line = self.lines.get(room)
        if line is None:
            return  # nobody here reads this room
        async with line.lock:
            cursor = line.cursor
            if cursor.has(message):
                self.metrics.duplicates.inc()
                return
            self._warn_reset(room, cursor.epoch, message["epoch"])
            await self._write(room, cursor.feed(message))
            if cursor.behind and line.filler is None:
                line.filler = asyncio.ensure_future(self._fill(room, line))

    async def _write(self, room: str, messages: list[dict]) -> None:
        for message in messages:
            await self.write(room, message)

    def _warn_reset(self, room: str, was: str | None, now: str) -> None:
        if was is not None and now != was:
            self.log.warning("history of room %r was reset (epoch %s -> %s)", room, was, now)

    async def _fill(self, room: str, line: Line) -> None:
        """Give a hole GAP_WAIT to fill itself, then read it from history."""
        cursor = line.cursor
        try:
            wait = GAP_WAIT
            attempts = 0
            while True:
                await asyncio.sleep(wait)
                async with line.lock:
                    if not cursor.behind or self.lines.get(room) is not line:
                        return
                    # Every hole up to the last waiting number at once: a
                    # later hole must be read too, not given up unread.
                    last = max(cursor.waiting)
                    attempts += 1
                    failed = False
                    try:
                        found = await self.history.between(room, cursor.seq, last)
                        await self._write(room, self._take(cursor, found))
                    except HistoryUnavailable:
                        self.metrics.history_failures.inc()
                        failed = True
                    if cursor.behind and (not failed or attempts >= FILL_ATTEMPTS):
                        # The history does not hold them (any more), or Redis
                        # has not answered for a while: move on.  Clients
                        # see the jump and are told when they ask.
                        self.log.warning("room %r: messages %d to %d are lost to this "
                                         "replica", room, cursor.seq + 1,
                                         min(cursor.waiting) - 1)
                        await self._write(room, cursor.skip())
                wait = min(wait * 2, 1.0)
        finally:
            line.filler = None

    def _take(self, cursor: Cursor, messages: list[dict]) -> list[dict]:
        """Feed messages read from history; return those now ready."""
        ready = []
        for message in messages:
            if message["epoch"] == cursor.epoch and not cursor.has(message):
                self.metrics.recovered.inc()
                ready.extend(cursor.feed(message))
        return ready

    # -- the safety net -----------------------------------------------------
    async def catch_up(self) -> None:
        """Fetch messages stored a round ago that have not reached us yet."""
        for room in [r for r in self.lines if not self.occupied(r)]:
            line = self.lines[room]
            if not line.lock.locked():
                del self.lines[room]
        rooms = [room for room, line in self.lines.items() if line.cursor.epoch is not None]
        if not rooms:
            return
        heads = await self.history.heads(rooms)
        for room, (epoch, head) in heads.items():
            await self._catch_room(room, epoch, head, lag=True)

    async def refresh(self, rooms) -> None:
        """Read what ``rooms`` hold beyond their lines, now.

        Called when Redis confirms that this replica hears a room's channel
        (pubsub mode): a message published before that instant will never
        arrive live, so it is read from the history at once instead of at
        the next catch-up round."""
        rooms = [room for room in rooms if (line := self.lines.get(room)) is not None
                 and line.cursor.epoch is not None]
        if not rooms:
            return
        heads = await self.history.heads(rooms)
        for room, (epoch, head) in heads.items():
            await self._catch_room(room, epoch, head, lag=False)

    async def _catch_room(self, room: str, epoch: str, head: int, *, lag: bool) -> None:
        """Bring ``room``'s line up to ``head``; with ``lag``, only up to the
        head seen a round ago (newer ones may be on their way live)."""
        line = self.lines.get(room)
        if line is None or line.cursor.epoch is None:
            return
        async with line.lock:
            cursor = line.cursor
            if epoch != cursor.epoch:
                self._warn_reset(room, cursor.epoch, epoch)
                line.restart(epoch, 0)
                line.seen_head = head
            behind = min(line.seen_head, head) if lag else head
            line.seen_head = head
            if cursor.seq >= behind:
                return
            found = await self.history.between(room, cursor.seq, behind + 1)
            await self._write(room, self._take(cursor, found))

    async def run(self) -> None:
        """Catch up forever (a task of the replica's lifetime), unless off."""
        if self.catch_up_every <= 0:
            self.log.warning("history catch-up is off (CATCH_UP_EVERY=0): a message "
                             "the backplane drops without a trace stays lost")
            return
        failing = False
        while True:
            await asyncio.sleep(self.catch_up_every)
            try:
                await self.catch_up()
            except HistoryUnavailable as exc:
                self.metrics.history_failures.inc()
                if not failing:
                    self.log.warning("history: catching up failed: %s", exc)
                failing = True
                continue
            except Exception:
                self.log.exception("history: catching up failed")
                continue
            if failing:
                self.log.info("history: catching up again")
                failing = False

    async def close(self) -> None:
        tasks = [line.filler for line in self.lines.values() if line.filler]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
