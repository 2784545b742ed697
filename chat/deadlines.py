"""Every connection's next ping, and its pong deadline, on one loop timer.

Engine.IO pings each client every ``PING_INTERVAL`` seconds and lets it go
if no PONG comes within ``PING_TIMEOUT`` (``chat/guard.py``).  A loop timer
per connection for that (``call_later``) is a timer handle, uvloop's timer
object and libuv's: close to half a kilobyte of every idle connection, for
a deadline that does not need to be kept to the millisecond.

:class:`Deadlines` files each callback under the tick (``TICK`` seconds) it
falls due in, and one loop timer, armed only while something is filed,
runs a tick's callbacks when it comes: a connection costs an entry in a
dict.  A callback runs at most one tick late and never early (but for
the millisecond by which the loop's clock may wake a timer); for the
defaults (25 s and 20 s) that is 0.4 % of the interval, and clients allow
the whole ``PING_TIMEOUT`` of slack besides.

Each owner has at most one callback filed; filing another replaces it.  An
owner keeps its own tick in ``deadline_tick`` (None when nothing is filed),
so that replacing and cancelling find it without a search.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

TICK = 0.1  # seconds


class Deadlines:
    __slots__ = ("_armed", "_loop", "_ticks", "_timer")

    def __init__(self) -> None:
        self._ticks: dict[int, dict[object, Callable[[], None]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0  # the tick the timer is set for
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return sum(len(due) for due in self._ticks.values())

    def set(self, owner, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback()`` in ``delay`` seconds (up to a tick later),
        instead of whatever ``owner`` had filed."""
        self.cancel(owner)
        loop = self._loop = asyncio.get_running_loop()
        tick = math.ceil((loop.time() + delay) / TICK)
        due = self._ticks.get(tick)
        if due is None:
            due = self._ticks[tick] = {}
        due[owner] = callback
        owner.deadline_tick = tick
        if self._timer is None or tick < self._armed:
            self._arm(tick)

    def cancel(self, owner) -> None:
        tick = owner.deadline_tick
        if tick is None:
            return
        owner.deadline_tick = None
        due = self._ticks.get(tick)
        if due is not None:
            due.pop(owner, None)
            if not due:
                del self._ticks[tick]

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = tick
        self._timer = self._loop.call_at(tick * TICK, self._run)

    def _run(self) -> None:
        self._timer = None
        # The loop's clock may wake a timer a millisecond early.
        now = math.floor(self._loop.time() / TICK + 0.01)
        for tick in sorted(tick for tick in self._ticks if tick <= now):
            due = self._ticks.get(tick)
            while due:  # drained in place: a callback may cancel another's
                owner, callback = due.popitem()
                owner.deadline_tick = None
                try:
                    callback()
                except Exception as exc:  # one connection's failure stops no other's
                    self._loop.call_exception_handler(
                        {"message": "a ping deadline's callback failed", "exception": exc})
            if due is not None and not due and self._ticks.get(tick) is due:
                del self._ticks[tick]
        if self._ticks:
            first = min(self._ticks)
            if self._timer is None or first < self._armed:
                self._arm(first)
