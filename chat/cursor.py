"""Where a reader stands in a room's numbered history.

Every chat message carries its room's number (``seq``) under the room's
``epoch`` (``history.py``).  Two kinds of reader walk those numbers: each
replica, for every room it has members in (``delivery.py``), and each
client session (``chat/tools/session.py``; the page does the same in
``web/app.js``).  Both need the same bookkeeping, pure and without I/O,
which is this class.
"""

from __future__ import annotations


class Cursor:
    """Where a reader stands in a room's numbered history, and what to do
    with each message that arrives (pure bookkeeping, no I/O).

    Both ends read this way: a replica for each room it has members in
    (``chat/delivery.py``), and each client session (``chat/tools/session.py``;
    the page does the same in ``web/app.js``).  ``feed`` returns the
    messages to hand on now, in order: duplicates (a number already handed
    on) are dropped, and a message ahead of a hole waits in ``waiting`` until
    :meth:`skip` or the missing numbers arrive.  A message of another epoch
    starts the numbering again.
    """

    def __init__(self):
        self.epoch: str | None = None
        self.seq = 0
        self.waiting: dict[int, dict] = {}

    def resume(self) -> dict | None:
        """The ``resume`` field for the next connection, if there is a position."""
        return {"epoch": self.epoch, "seq": self.seq} if self.epoch else None

    def restart(self, epoch: str | None, seq: int) -> None:
        self.epoch, self.seq = epoch, seq
        self.waiting.clear()

    def feed(self, message: dict) -> list[dict]:
        seq, epoch = message.get("seq"), message.get("epoch")
        if not isinstance(seq, int):
            return [message]  # not numbered (a very old server): just show it
        if self.epoch is None:
            self.restart(epoch, seq - 1)
        elif epoch != self.epoch:
            self.restart(epoch, 0)
        if seq <= self.seq or seq in self.waiting:
            return []
        self.waiting[seq] = message
        return self._ready()

    def has(self, message: dict) -> bool:
        """``message`` was handed on already, or is waiting."""
        seq = message.get("seq")
        return message.get("epoch") == self.epoch and isinstance(seq, int) and (
            seq <= self.seq or seq in self.waiting)

    def skip(self) -> list[dict]:
        """Give up on the hole before the first waiting message."""
        if self.waiting:
            self.seq = min(self.waiting) - 1
        return self._ready()

    def _ready(self) -> list[dict]:
        out = []
        while (message := self.waiting.pop(self.seq + 1, None)) is not None:
            self.seq += 1
            out.append(message)
        return out

    @property
    def behind(self) -> bool:
        """A message is waiting for an earlier one that has not arrived."""
        return bool(self.waiting)
