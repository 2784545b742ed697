"""Room admission: how many rooms one client may enter, and how many may live.

A room costs memory on the replica (its Socket.IO room, its delivery line,
its presence bookkeeping) and in Redis (a room's meta hash; its history for
30 days after its last message).  Naming a new room costs a client nothing,
so without a limit one process could create hundreds of rooms a second.
Before a client enters a room (on connect, or with ``join``),
:meth:`RoomGate.admit` checks two limits, both counted on this replica:

* ``ROOMS_PER_MINUTE``: the distinct rooms one client address (NGINX's
  ``X-Real-IP``, else the peer address) may enter within a minute.  Each new
  room takes one of them; entering a room the address entered within the
  minute is free, so reconnections and tabs in the same room cost nothing.
* ``MAX_ROOMS``: the rooms with members on this replica.  A room that has
  members here may always be entered; a new one only below the limit.

Counted per replica rather than across the cluster: a global count would be
a Redis round trip on every connect, and each replica's share already bounds
the total (N replicas: at most N times the limits).  Addresses are
remembered for a minute, at most ``MAX_ADDRESSES`` of them (the least
recently seen go first).  Refusals raise :class:`ProtocolError` with the
sentence the client gets in its ``connect_error`` or ``join`` ack.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from .protocol import ProtocolError

WINDOW = 60.0  # seconds: "per minute"
MAX_ADDRESSES = 10_000
TOO_MANY_NEW = "rate limit: too many new rooms in the last minute, try again later"
TOO_MANY_ROOMS = "too many rooms on this server: join a room that already has people in it"


class RoomGate:
    def __init__(self, per_minute: int, max_rooms: int, *,
                 occupied: Callable[[str], bool], live: Callable[[], int]):
        self.per_minute = per_minute
        self.max_rooms = max_rooms
        self.occupied = occupied  # occupied(room): the room has members here
        self.live = live  # live(): how many rooms have members here
        # address -> {room: when it last entered it}, least recently used first
        self.recent: collections.OrderedDict[str, dict[str, float]] = (
            collections.OrderedDict())

    def admit(self, address: str, room: str, now: float | None = None) -> None:
        """Let ``address`` enter ``room``, or raise :class:`ProtocolError`."""
        now = time.monotonic() if now is None else now
        entered = self.recent.pop(address, None) or {}
        self.recent[address] = entered
        while len(self.recent) > MAX_ADDRESSES:
            self.recent.popitem(last=False)
        for old in [r for r, at in entered.items() if now - at >= WINDOW]:
            del entered[old]
        if not self.occupied(room) and self.live() >= self.max_rooms:
            raise ProtocolError(TOO_MANY_ROOMS)
        if room not in entered and len(entered) >= self.per_minute:
            raise ProtocolError(TOO_MANY_NEW)
        entered[room] = now
