"""Socket.IO's own connection state recovery, for stock clients, on any replica.

The official socket.io-client (4.6+) knows a recovery protocol that Node's
server implements only with some adapters:

* the server's CONNECT answer carries a private session id, ``pid``, beside
  ``sid``;
* each event carries, as its last argument, a string: its *offset*;
* a client that reconnects puts ``pid`` and the last offset it saw into its
  CONNECT data; when the answer carries the same ``pid`` it sets
  ``socket.recovered`` and trusts that what it missed follows.

Here a chat ``message`` carries ``"<seq>:<epoch>"`` (its room's number,
``history.py``), and so does the ``welcome``, which is where a newcomer
starts.  A stock client keeps the last one, so the room's history, which
every replica reads, tells what it missed.  Only connections that ask for it
(``auth.recovery: true``) get a ``pid`` and offsets: python-socketio's
client hands every argument to the handler, and an extra one would break
the apps written for it.

The session itself (who, which sid, which room and presence seat) is a
record per pid (``session_store.py``), written when the connection opens and
kept while it lives; a replica that is killed cannot write anything, so the
record must already be there.  Its life::

    open     live, owned by this replica instance; refreshed every period
    closed   by a lost transport, a ping timeout or a drain: parked, for
             RECOVERY_WINDOW seconds; its presence seat stays (no "left")
    claimed  a CONNECT with its pid, on any replica: live again, owned by
             that replica, which sends the missed messages (events.py)
    ended    the client said goodbye, or the window passed: deleted, and
             its seat leaves presence

A live record is claimed only from a replica that is gone (its alive key,
renewed every half second, has lapsed), so a pid cannot be used twice at
once: a second client that presents it, or a pid nobody issued, gets a
fresh session.  After a crash the record outlives its owner by the window
plus up to two refresh periods (the dead replica cannot note the time).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import time
from collections.abc import Callable

from . import jsonio
from .history import HistoryUnavailable, resume_gap
from .presence import Seat, entry
from .session_store import ALIVE_TTL, BEAT

PID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
OFFSET = re.compile(r"^(\d{1,16}):([0-9A-Za-z]{1,64})$")
# A disconnect the client comes back from: its session is parked.
RECOVERABLE = frozenset({"transport close", "transport error", "ping timeout"})


def offset(message: dict) -> str:
    """The offset a stock client keeps for a numbered chat message."""
    return f"{message['seq']}:{message['epoch']}"


def parse_offset(value) -> tuple[str, int] | None:
    """``(epoch, seq)`` from an offset a client sent back; None if it is not one."""
    match = OFFSET.match(value) if isinstance(value, str) else None
    return (match[2], int(match[1])) if match else None


@dataclasses.dataclass(slots=True)
class Restored:
    """A claimed session, waiting for its CONNECT to be handled."""
    pid: str
    record: dict
    position: tuple[str, int]  # (epoch, seq): where the client's history stops


class Recovery:
    def __init__(self, store, *, window: float, history, presence, logger: logging.Logger,
                 instance: str, limit: int):
        self.store = store
        self.limit = limit  # the most missed messages a session is resumed with
        self.window = window
        self.history = history
        self.presence = presence
        self.log = logger
        self.instance = instance
        # Live records are refreshed every period and live two periods past
        # the window: a killed replica's clients still find theirs.
        self.period = min(30.0, max(window / 4, 0.25))
        self.pid_of: dict[str, str] = {}  # sid -> pid: the connections that get offsets
        self.live: dict[str, str] = {}  # pid -> its record as written
        self.parked: dict[str, tuple[str, str, Seat]] = {}  # pid -> (record, room, seat)
        self.pending: dict[str, Restored] = {}  # eio sid -> a claimed session
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def wants(self, auth) -> bool:
        return self.enabled and isinstance(auth, dict) and auth.get("recovery") is True

    @property
    def seat_ttl(self) -> float | None:
        """How long the presence seat of a session outlives its replica: the
        window, so that a client whose replica was killed is not shown
        leaving while it may still come back (None: presence's own TTL)."""
        return self.window if self.window > self.presence.ttl else None

    def new_pid(self, sid: str) -> str:
        pid = secrets.token_urlsafe(18)
        self.pid_of[sid] = pid
        return pid

    # -- a connection's life ------------------------------------------------
    async def opened(self, sid: str, record: dict) -> None:
        """Write the live record of ``sid``'s session (its pid is issued)."""
        pid = self.pid_of[sid]
        text = self._text(record, "live")
        if not self.live:
            await self.store.beat()  # the first live record: say we are alive first
        await self.store.put(pid, text, self.window + 2 * self.period)
        self.live[pid] = text  # (not if Redis did not take it: nothing to keep)

    async def moved(self, sid: str, record: dict) -> None:
        """The connection changed room: its record says where it is now."""
        pid = self.pid_of.get(sid)
        if pid is None or pid not in self.live:
            return
        old, text = self.live[pid], self._text(record, "live")
        if await self.store.swap(pid, old, text, self.window + 2 * self.period):
            self.live[pid] = text

    async def closed(self, sid: str, reason: str | None) -> bool:
        """The connection ended: park its session (True: keep its presence
        seat) or end it."""
        pid = self.pid_of.pop(sid, None)
        text = self.live.pop(pid, None) if pid is not None else None
        if text is None:
            return False
        if reason not in RECOVERABLE:
            await self.store.swap(pid, text, None)
            return False
        record = jsonio.loads_own(text)
        parked = self._text(record, "parked")
        if not await self.store.swap(pid, text, parked, self.window):
            # Claimed elsewhere already (this replica stalled): that replica
            # holds the seat now.  Or gone (Redis lost it): a goodbye.
            if await self.store.get(pid) is None:
                return False
            self.presence.park(record["seat"])
            return True
        room, seat = self.presence.park(record["seat"])
        if room is not None:
            self.parked[pid] = (parked, room, seat)
        return True

    def _text(self, record: dict, state: str) -> str:
        return jsonio.dumps({**record, "owner": self.instance, "state": state})

    # -- a client comes back ------------------------------------------------
    async def claim(self, pid, offset_text, eio_sid: str,
                    admits: Callable[[dict], bool] = lambda record: True) -> Restored | None:
        """Take the session ``pid`` names for this replica, or None (a fresh
        session): unknown, held by a live connection, not for this client
        (``admits``: its token names another user), or beyond what the
        room's history still holds."""
        if not self.enabled or not isinstance(pid, str) or not PID.match(pid):
            return None
        deadline = time.monotonic() + ALIVE_TTL + 2 * BEAT
        while True:
            text = await self.store.get(pid)
            if text is None:
                return None
            record = jsonio.loads_own(text)
            if record["state"] == "live":
                if record["owner"] == self.instance:
                    return None  # its connection is here, or just closed
                if not await self.store.gone(record["owner"]):
                    # Its replica looks alive: it may have just been killed
                    # (its key lapses within ALIVE_TTL), or the pid is in
                    # use.  Wait for one or the other, briefly.
                    if time.monotonic() > deadline:
                        return None
                    await asyncio.sleep(BEAT / 2)
                    continue
            if not admits(record):
                return None
            position = self._position(record, offset_text)
            if not await self._history_reaches(record["room"], position):
                return None
            claimed = self._text(record, "live")
            if not self.live:
                await self.store.beat()
            if not await self.store.swap(pid, text, claimed, self.window + 2 * self.period):
                return None  # another replica took it first
            self.live[pid] = claimed
            self.parked.pop(pid, None)
            restored = Restored(pid, record, position)
            self.pending[eio_sid] = restored
            return restored

    @staticmethod
    def _position(record: dict, offset_text) -> tuple[str, int]:
        """Where to replay from: the client's offset when it is of the
        room the record names and not before where it entered, else where
        it entered."""
        entered = (record["epoch"], record["seq"])
        sent = parse_offset(offset_text)
        if sent is not None and sent[0] == entered[0] and sent[1] >= entered[1]:
            return sent
        return entered

    async def _history_reaches(self, room: str, position: tuple[str, int]) -> bool:
        epoch, after = position
        try:
            piece = await self.history.since(room, after, 1)
        except HistoryUnavailable:
            return False
        return resume_gap(piece, epoch, after) is None and piece.last - after <= self.limit

    async def take(self, sid: str, eio_sid: str) -> Restored | None:
        """The session claimed for this CONNECT, now that its sid is known
        (another sid: its old one was still in use here, so it ends)."""
        restored = self.pending.pop(eio_sid, None)
        if restored is not None and restored.record["sid"] != sid:
            await self.abandon(restored, None)
            return None
        if restored is not None:
            self.pid_of[sid] = restored.pid
        return restored

    async def abandon(self, restored: Restored, sid: str | None) -> None:
        """A claimed session could not be resumed after all: end it, and
        its seat, so that the fresh session does not meet its own ghost."""
        if sid is not None:
            self.pid_of.pop(sid, None)
        text = self.live.pop(restored.pid, None)
        if text is not None:
            await self.store.swap(restored.pid, text, None)
        record = restored.record
        self.presence.park(record["seat"])  # (if it got as far as being seated here)
        await self.presence.release(record["room"], Seat(
            record["seat"], entry(record["user"], record["name"]), record["fold"] or ""))

    # -- upkeep ---------------------------------------------------------------
    async def run(self) -> None:
        """Renew the alive key while this replica has live records; every
        period refresh them; settle the parked ones (a lifetime task).  A
        replica none of whose clients asked for recovery writes nothing."""
        if not self.enabled:
            return
        due = held = 0.0
        while True:
            try:
                if self.live:  # only a replica with live records must be seen alive
                    await self.store.beat()
                now = time.monotonic()
                if now >= due:
                    due = now + self.period
                    await self.store.touch(list(self.live), self.window + 2 * self.period)
                if self.parked:
                    await self._settle(hold=now >= held)
                    held = now + self.presence.ttl / 3 if now >= held else held
                if self._failing:
                    self.log.info("recovery: sessions kept again")
                    self._failing = False
            except Exception as exc:
                if not self._failing:
                    self.log.warning("recovery: keeping sessions failed: %s", exc)
                self._failing = True
            await asyncio.sleep(BEAT)

    async def _settle(self, hold: bool) -> None:
        """Parked sessions whose window passed (their record expired) leave
        presence; those claimed by another replica are dropped here (that
        replica holds the seat now); with ``hold``, the seats of the rest
        are kept alive, right after reading that they are still parked."""
        pids = list(self.parked)
        waiting = []
        for pid, text in zip(pids, await self.store.read(pids), strict=True):
            mine, room, seat = self.parked[pid]
            if text == mine:
                waiting.append((room, seat))
                continue
            del self.parked[pid]
            if text is None:
                await self.presence.release(room, seat)
        if hold:
            await self.presence.hold(waiting, self.seat_ttl or self.presence.ttl)

    async def close(self) -> None:
        """Stop: the parked sessions stay claimable for the rest of their
        window, their seats expire with the presence TTL unless claimed."""
        if self.enabled:
            await self.store.forget_me()
