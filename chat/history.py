"""Room history: every chat message numbered and kept, so none is lost.

Redis PUBLISH delivers at most once: a replica that is not subscribed at
that instant, or a client between two connections, never sees the message.
So a message is first *stored*, then relayed.  Storing gives it its number:

* each room has a sequence counter in Redis; appending a message increments
  it and adds the message to the room's Stream under the ID ``<seq>-0``, in
  one Lua script, so every replica agrees on the order and no two messages
  share a number;
* the Stream is capped at ``HISTORY_LENGTH`` entries (exactly, so the
  window a client can resume within is the documented one);
* each room also has an *epoch*, a random tag created with its counter.  If
  Redis loses the room (restarted without persistence, keys expired), the
  counter starts again at 1 under a new epoch, and a client holding an old
  sequence number learns that its position means nothing any more instead
  of silently skipping messages.

Keys, for a room R and ``REDIS_CHANNEL`` C (rooms of two chats sharing a
Redis stay apart)::

    C:room:R:meta   hash   epoch, seq
    C:room:R:log    stream <seq>-0 -> {m: message JSON without seq/epoch}

Both expire after ``IDLE_EXPIRY`` without a message, so abandoned rooms do
not stay in Redis forever.

Readers (the welcome, a resume, a replica filling a gap) get messages with
``seq`` and ``epoch`` added back.  ``MemoryHistory`` keeps the same promises
in-process for the single node without Redis.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import jsonio

IDLE_EXPIRY_MS = 30 * 24 * 3600 * 1000  # a room's history outlives 30 idle days

APPEND = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], seq .. '-0', 'm', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {seq, redis.call('HGET', KEYS[1], 'epoch')}
"""


class HistoryUnavailable(RuntimeError):
    """Redis did not answer: the message could not be stored (or read)."""


@dataclasses.dataclass
class Slice:
    """Part of a room's history, and where the room stands."""

    epoch: str
    last: int  # the room's latest sequence number (0: no message yet)
    messages: list[dict]  # oldest first, each with "seq" and "epoch"


def new_epoch() -> str:
    return secrets.token_hex(4)


def resume_gap(piece: Slice, epoch: str | None, after: int) -> str | None:
    """Why ``piece`` (messages after ``after``) cannot continue a client's
    history exactly, or None when it can.

    ``epoch``/``after`` are what the client saw last.  The answer is a
    sentence for the client: the welcome carries it as ``gap``.
    """
    if epoch != piece.epoch or after > piece.last:
        return "the room's history was reset since you were here"
    if after == piece.last:
        return None
    if not piece.messages or piece.messages[0]["seq"] != after + 1:
        return "you missed more messages than the history keeps"
    return None


class Cursor:
    """Where a reader stands in a room's numbered history, and what to do
    with each message that arrives (pure bookkeeping, no I/O).

    Both ends read this way: a replica for each room it has members in
    (``chat/delivery.py``), and each client session (``chat/session.py``;
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


class MemoryHistory:
    """History for the single node without Redis (``mode`` memory)."""

    def __init__(self, length: int):
        self.length = length
        self.epoch = new_epoch()  # one per process: a restart forgets everything
        self._logs: dict[str, collections.deque] = {}
        self._seqs: dict[str, int] = {}

    async def append(self, room: str, message: dict) -> dict:
        seq = self._seqs.get(room, 0) + 1
        self._seqs[room] = seq
        stored = {**message, "seq": seq, "epoch": self.epoch}
        self._logs.setdefault(room, collections.deque(maxlen=self.length)).append(stored)
        return stored

    async def tail(self, room: str, count: int) -> Slice:
        log = self._logs.get(room, ())
        messages = list(log)[-count:] if count else []
        return Slice(self.epoch, self._seqs.get(room, 0), messages)

    async def since(self, room: str, after: int, limit: int) -> Slice:
        log = self._logs.get(room, ())
        messages = [m for m in log if m["seq"] > after][:limit]
        return Slice(self.epoch, self._seqs.get(room, 0), messages)

    async def between(self, room: str, after: int, before: int) -> list[dict]:
        return [m for m in self._logs.get(room, ()) if after < m["seq"] < before]

    async def heads(self, rooms) -> dict[str, tuple[str, int]]:
        return {room: (self.epoch, self._seqs.get(room, 0)) for room in rooms}

    async def close(self) -> None:
        return None


class RedisHistory:
    """History in Redis, shared by every replica (both Redis modes)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, length: int):
        self.redis = client
        self.prefix = prefix
        self.length = length
        self._append = client.register_script(APPEND)

    def _keys(self, room: str) -> tuple[str, str]:
        base = f"{self.prefix}:room:{room}"
        return f"{base}:meta", f"{base}:log"

    async def append(self, room: str, message: dict) -> dict:
        meta, log = self._keys(room)
        try:
            seq, epoch = await self._append(
                keys=[meta, log],
                args=[new_epoch(), self.length, jsonio.dumps(message), IDLE_EXPIRY_MS])
        except (OSError, RedisError) as exc:
            raise HistoryUnavailable(f"Redis is unreachable ({exc})") from None
        return {**message, "seq": int(seq), "epoch": as_text(epoch)}

    async def _read(self, room: str, command) -> Slice:
        """Run one stream read in a transaction with the room's meta data,
        creating the room's epoch if it has none, so every answer has one."""
        meta, log = self._keys(room)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(meta, "epoch", new_epoch())
                pipe.pexpire(meta, IDLE_EXPIRY_MS, nx=True)
                pipe.hmget(meta, "epoch", "seq")
                if command is not None:
                    command(pipe, log)
                _, _, (epoch, seq), *rest = await pipe.execute()
        except (OSError, RedisError) as exc:
            raise HistoryUnavailable(f"Redis is unreachable ({exc})") from None
        epoch = as_text(epoch)
        entries = rest[0] if rest else []
        return Slice(epoch, int(seq or 0), [_entry(e, epoch) for e in entries])

    async def tail(self, room: str, count: int) -> Slice:
        if count == 0:
            return await self._read(room, None)
        piece = await self._read(
            room, lambda pipe, log: pipe.xrevrange(log, "+", "-", count=count))
        piece.messages.reverse()
        return piece

    async def since(self, room: str, after: int, limit: int) -> Slice:
        return await self._read(
            room, lambda pipe, log: pipe.xrange(log, f"{after + 1}-0", "+", count=limit))

    async def between(self, room: str, after: int, before: int) -> list[dict]:
        """Messages numbered strictly between ``after`` and ``before``."""
        if before - after < 2:
            return []
        meta, log = self._keys(room)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hget(meta, "epoch")
                pipe.xrange(log, f"{after + 1}-0", f"{before - 1}-0")
                epoch, entries = await pipe.execute()
        except (OSError, RedisError) as exc:
            raise HistoryUnavailable(f"Redis is unreachable ({exc})") from None
        epoch = as_text(epoch)
        return [_entry(e, epoch) for e in entries]

    async def heads(self, rooms) -> dict[str, tuple[str, int]]:
        """Each room's ``(epoch, latest seq)``, in one round trip."""
        rooms = list(rooms)
        if not rooms:
            return {}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.hmget(self._keys(room)[0], "epoch", "seq")
                answers = await pipe.execute()
        except (OSError, RedisError) as exc:
            raise HistoryUnavailable(f"Redis is unreachable ({exc})") from None
        return {room: (as_text(epoch), int(seq or 0))
                for room, (epoch, seq) in zip(rooms, answers, strict=True) if epoch}

    async def close(self) -> None:
        await self.redis.aclose()


def as_text(value) -> str:
    """A Redis reply (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(entry, epoch: str) -> dict:
    entry_id, fields = entry
    message = jsonio.loads(fields[b"m"])
    message["seq"] = int(as_text(entry_id).partition("-")[0])
    message["epoch"] = epoch
    return message
