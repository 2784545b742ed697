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

A room's three keys (named in ``redis_keys.py``): ``meta`` (a hash: epoch,
seq), ``log`` (a stream: ``<seq>-0`` -> the message JSON without seq and
epoch) and ``ids`` (a sorted set: message id -> seq, for the messages the
log holds).  All three expire after ``IDLE_EXPIRY`` without a message, so abandoned rooms
do not stay in Redis forever.  A room that never had a message has only its
meta hash (created by the first read, so that the room has an epoch), and
that expires ``EMPTY_EXPIRY`` after the last read or presence refresh: a
client naming rooms it never writes in leaves nothing lasting behind.  The
first message gives the room the full ``IDLE_EXPIRY``.

**A message id is an idempotency key.**  A client names each message
(``id``); storing a message whose id the room already holds stores nothing
and answers with the number the first copy got (``duplicate``).  So when an
answer is lost (Redis stalled past the client timeout, then ran the script
anyway; a connection broke after the command was written) the sender is
told "unknown" (:class:`HistoryUncertain`) and may send the same message
again without it appearing twice.  The ids are kept as long as their
messages are: for the room's last ``HISTORY_LENGTH`` messages.

How an append can fail, and what the sender can be told:

* :class:`HistoryRefused`: Redis answered "no" (out of memory, read-only
  replica, no permission); the script had not written anything;
* :class:`HistoryUnavailable`: no connection could be made, so no command
  was sent (the client that stores makes no second attempt on its own, see
  ``create_stores`` in ``app.py``);
* :class:`HistoryUncertain`: the command was sent and no answer came back;
* :class:`HistoryNotReplicated`: stored on the master, but fewer than
  ``REDIS_WAIT_REPLICAS`` of its replicas confirmed a copy within
  ``WAIT_TIMEOUT_MS``: a failover now could lose it.

With ``REDIS_WAIT_REPLICAS`` above 0 the append and a ``WAIT`` go to Redis
in one pipeline, on one connection (on a Cluster, to the room's master), so
confirming the copy costs no extra round trip, only the replica's delay.

Readers (the welcome, a resume, a replica filling a gap) get messages with
``seq`` and ``epoch`` added back.  ``MemoryHistory`` keeps the same promises
in-process for the single node without Redis.
"""

from __future__ import annotations

import collections
import dataclasses

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from . import jsonio
from .protocol import random_hex
from .redis_keys import RedisKeys
from .redis_quick import HMGET_MANY, evalsha, hmget_many

IDLE_EXPIRY_MS = 30 * 24 * 3600 * 1000  # a room's history outlives 30 idle days
EMPTY_EXPIRY_MS = 10 * 60 * 1000  # a room without a message: 10 minutes after its last use
# How long an append waits for its copies on Redis replicas: well inside the
# store client's 1 s socket timeout, so a slow replica is told apart from a
# silent master.
WAIT_TIMEOUT_MS = 500

# KEYS: meta, log, ids.  ARGV: a new epoch, length, message JSON, expiry
# (ms), message id, then the room's channel ('' for none), the sender's
# host id and the publish command.  Returns {seq, epoch, 1 if the id was
# stored before}.  Reads first, so that a refusal (out of memory: Redis
# checks at the first write) comes before anything is written.  With a
# channel, the stored message is also published there, ready to write to
# sockets (the room-channel frame of ``backplane/frames.py``): the one round
# trip of a message, and Redis's order of publishing is the order of numbers.
APPEND = """
local first = redis.call('ZSCORE', KEYS[3], ARGV[5])
if first then
  return {tonumber(first), redis.call('HGET', KEYS[1], 'epoch'), 1}
end
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], seq .. '-0', 'm', ARGV[3])
redis.call('ZADD', KEYS[3], seq, ARGV[5])
if seq > tonumber(ARGV[2]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', seq - tonumber(ARGV[2]))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if ARGV[6] ~= '' then
  local body = string.sub(ARGV[3], 1, -2) .. ',"seq":' .. seq .. ',"epoch":"' .. epoch .. '"}'
  redis.call(ARGV[8], ARGV[6],
             ARGV[7] .. ' ' .. seq .. ' ' .. epoch .. ' - 2["message",' .. body .. ']')
end
return {seq, epoch, 0}
"""


class HistoryUnavailable(RuntimeError):
    """Redis could not be reached: nothing was stored (or read)."""


class HistoryRefused(HistoryUnavailable):
    """Redis answered, and refused to store the message (out of memory...)."""


class HistoryUncertain(RuntimeError):
    """The append was sent and no answer came: it may or may not be stored."""


class HistoryNotReplicated(HistoryUncertain):
    """Stored on the master, not confirmed on enough of its replicas."""


@dataclasses.dataclass
class Slice:
    """Part of a room's history, and where the room stands."""

    epoch: str
    last: int  # the room's latest sequence number (0: no message yet)
    messages: list[dict]  # oldest first, each with "seq" and "epoch"


def new_epoch() -> str:
    return random_hex(4)


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


class MemoryHistory:
    """History for the single node without Redis (``mode`` memory)."""

    relays = False  # the manager relays what is stored here

    def __init__(self, length: int):
        self.length = length
        self.epoch = new_epoch()  # one per process: a restart forgets everything
        self._logs: dict[str, collections.deque] = {}
        self._seqs: dict[str, int] = {}
        self._ids: dict[str, dict[str, int]] = {}  # room -> id -> seq, as the log holds

    async def append(self, room: str, message: dict) -> dict:
        log = self._logs.setdefault(room, collections.deque(maxlen=self.length))
        ids = self._ids.setdefault(room, {})
        first = ids.get(message["id"])
        if first is not None:
            return {**message, "seq": first, "epoch": self.epoch, "duplicate": True}
        seq = self._seqs.get(room, 0) + 1
        self._seqs[room] = seq
        stored = {**message, "seq": seq, "epoch": self.epoch}
        if len(log) == self.length:  # the oldest leaves the log, and its id with it
            ids.pop(log[0]["id"], None)
        log.append(stored)
        ids[message["id"]] = seq
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

    def __init__(self, client: aioredis.Redis | RedisCluster, *, keys: RedisKeys, length: int,
                 relay_host: str | None = None, publish: str = "PUBLISH",
                 wait_replicas: int = 0):
        self.redis = client
        self.keys = keys
        self.length = length
        self.wait_replicas = wait_replicas  # REDIS_WAIT_REPLICAS
        # pubsub mode: the append script also publishes each new message on
        # its room's channel, tagged with this replica's host id, so the
        # manager needs neither to publish it nor to hear it back.  Not when
        # the ack waits for Redis replicas (WAIT): a message is relayed only
        # once it is known to survive a failover, so the manager publishes it
        # after the WAIT (a second command).
        self.relay_host = relay_host
        self.relays = relay_host is not None and not wait_replicas
        self.publish = publish
        self._append = client.register_script(APPEND)
        self._heads = client.register_script(HMGET_MANY)

    def _keys(self, room: str) -> tuple[str, str]:
        return self.keys.room_meta(room), self.keys.room_log(room)

    async def append(self, room: str, message: dict) -> dict:
        """Store ``message`` (which has an ``id``) and return it numbered;
        ``duplicate: True`` when its id was stored before (nothing stored)."""
        meta, log = self._keys(room)
        ids = self.keys.room_ids(room)
        args = [new_epoch(), self.length, jsonio.dumps(message), IDLE_EXPIRY_MS, message["id"],
                self.keys.room_channel(room) if self.relays else "", self.relay_host or "",
                self.publish]
        try:
            if self.wait_replicas:
                (seq, epoch, before), copies = await self._append_and_wait([meta, log, ids], args)
            else:
                seq, epoch, before = await evalsha(self.redis, self._append, [meta, log, ids],
                                                   args)
        except ResponseError as exc:  # Redis answered: nothing was written
            raise HistoryRefused(refusal_reason(exc)) from None
        except (OSError, RedisError) as exc:
            if never_connected(exc):
                raise HistoryUnavailable(f"Redis is unreachable ({exc})") from None
            raise HistoryUncertain(f"no answer from Redis ({exc})") from None
        if self.wait_replicas and copies < self.wait_replicas:
            raise HistoryNotReplicated(
                f"stored, but {copies} of the {self.wait_replicas} Redis replica(s) "
                f"REDIS_WAIT_REPLICAS asks for confirmed a copy within {WAIT_TIMEOUT_MS} ms")
        stored = {**message, "seq": int(seq), "epoch": as_text(epoch)}
        if before:
            stored["duplicate"] = True
        return stored

    async def _append_and_wait(self, keys: list[str], args: list) -> tuple[list, int]:
        """The append script, then WAIT, in one round trip on one connection:
        (the script's answer, how many replicas confirmed)."""
        answer, copies = await self._pipelined(keys, args)
        if isinstance(answer, NoScriptError):
            # A master that never saw the script (one promoted by a
            # failover): it did not run; load it and send both again.
            await self.redis.script_load(APPEND)
            answer, copies = await self._pipelined(keys, args)
        for reply in (answer, copies):
            if isinstance(reply, Exception):
                raise reply
        return answer, int(copies)

    async def _pipelined(self, keys: list[str], args: list) -> list:
        pipe = self.redis.pipeline(transaction=False)
        # (execute_command: a cluster pipeline blocks its evalsha method)
        pipe.execute_command("EVALSHA", self._append.sha, len(keys), *keys, *args)
        wait = ("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)
        if isinstance(self.redis, RedisCluster):
            # WAIT names no key: send it to the room's master, where the
            # script runs (the pipeline keeps one connection per node).
            await self.redis.initialize()
            pipe.execute_command(*wait, target_nodes=self.redis.get_node_from_key(keys[0]))
        else:
            pipe.execute_command(*wait)
        return await pipe.execute(raise_on_error=False)

    async def _read(self, room: str, command) -> Slice:
        """Run one stream read in a transaction with the room's meta data,
        creating the room's epoch if it has none, so every answer has one."""
        meta, log = self._keys(room)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(meta, "epoch", new_epoch())
                # A new room lives EMPTY_EXPIRY; each read extends an empty
                # room's life (GT never shortens the history's IDLE_EXPIRY).
                pipe.pexpire(meta, EMPTY_EXPIRY_MS, nx=True)
                pipe.pexpire(meta, EMPTY_EXPIRY_MS, gt=True)
                pipe.hmget(meta, "epoch", "seq")
                if command is not None:
                    command(pipe, log)
                _, _, _, (epoch, seq), *rest = await pipe.execute()
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
        """Each room's ``(epoch, latest seq)``, in one round trip (per 500 rooms)."""
        rooms = list(rooms)
        if not rooms:
            return {}
        try:
            answers = await hmget_many(self.redis, self._heads, [self._keys(r)[0] for r in rooms],
                                       ["epoch", "seq"])
        except (OSError, RedisError) as exc:
            raise HistoryUnavailable(f"Redis is unreachable ({exc})") from None
        return {room: (as_text(epoch), int(seq or 0))
                for room, (epoch, seq) in zip(rooms, answers, strict=True) if epoch}

    async def close(self) -> None:
        await self.redis.aclose()


def never_connected(exc: BaseException) -> bool:
    """The error came from opening a connection, so no command was sent.

    redis-py words connection failures "Error <errno> connecting to <host>"
    and "Timeout connecting to server"; a failure on an open connection
    (reading, writing) is worded otherwise and may follow a sent command.
    A full connection pool (``chat.redis_clients.BoundedPool``) sends nothing.
    """
    if isinstance(exc, rx.MaxConnectionsError | MasterNotFoundError):
        return True  # the pool had no connection to give; the sentinels name no master
    if "previous master is now a slave" in str(exc):  # redis-py's word for READONLY
        return True
    return isinstance(exc, rx.ConnectionError | rx.TimeoutError) and "connecting to" in str(exc)


def refusal_reason(exc: ResponseError) -> str:
    """Redis's refusal, in words for the sender and the log."""
    if isinstance(exc, rx.OutOfMemoryError):
        return "Redis is out of memory (maxmemory reached)"
    if isinstance(exc, rx.ReadOnlyError):
        return "Redis is a read-only replica"
    return f"Redis refused it ({str(exc)[:120]})"


def as_text(value) -> str:
    """A Redis reply (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(entry, epoch: str) -> dict:
    entry_id, fields = entry
    message = jsonio.loads_own(fields[b"m"])
    message["seq"] = int(as_text(entry_id).partition("-")[0])
    message["epoch"] = epoch
    return message
