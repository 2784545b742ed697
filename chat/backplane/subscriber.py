"""The pubsub mode's one subscription connection, whose channels follow the
rooms this replica has members in.

Two kinds of channel (named in ``redis_keys.py``): the control channel,
always subscribed, and one channel per room, subscribed while the room has
a member here.  The manager (``manual.py``) says what it wants with
:meth:`Subscriber.want` and :meth:`Subscriber.drop`, synchronously, as
python-socketio moves sids in and out of rooms; this class does the I/O:

* a *sync* task sends the difference between what is wanted and what was
  sent, in batches of ``BATCH`` channels per SUBSCRIBE or UNSUBSCRIBE, so
  5,000 clients re-entering 2,000 rooms cost a handful of commands;
* the *reader* (:meth:`messages`) yields ``(channel, payload)`` and notes
  Redis's confirmations.  When Redis confirms a room channel, the messages
  published before that instant never reach us: ``on_confirmed`` hands
  those rooms to the Sequencer, which reads what it is missing from the
  history (``Sequencer.refresh``).  That covers the race of a client
  entering a room while someone speaks there.

Both share one connection, which is what Redis expects of a subscriber:
commands are only written (never answered but by pushes), and the sync task
writes with redis-py's ``send_command``, which does not read.

When the connection breaks, :meth:`messages` starts over on a new one after
a backoff (50 ms doubling to 500 ms, with jitter): the control channel
first, then every wanted room at once.  A subscription that goes silent is
probed with PING, and given up after ``DEAD_AFTER`` seconds without an
answer, so a half-open TCP connection cannot leave the replica deaf.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

from redis.crc import key_slot
from redis.exceptions import RedisError

BATCH = 512  # channels per SUBSCRIBE / UNSUBSCRIBE
RETRY_FIRST = 0.05  # seconds before the first resubscribe attempt
RETRY_MAX = 0.5  # cap of the doubling backoff
CONFIRM_WITHIN = 2.0  # seconds Redis has to confirm the control channel
IDLE_PING = 5.0  # PING the subscription after this long without traffic
DEAD_AFTER = 12.0  # ... and give it up after this long without any answer


class Subscriber:
    def __init__(self, client, control: str | None, metrics, logger,
                 on_confirmed: Callable[[list[str]], None], *, sharded: bool = False,
                 on_moved: Callable[[str], None] | None = None,
                 on_lost: Callable[[], None] | None = None):
        self.redis = client
        self.control = control  # None: a shard's link with room channels only (shards.py)
        self.metrics = metrics
        self.log = logger
        self.on_confirmed = on_confirmed  # on_confirmed(rooms)
        # Redis Cluster's sharded pub/sub: the same protocol, other names.
        self.sharded = sharded
        prefix = "s" if sharded else ""
        self.commands = (f"{prefix}SUBSCRIBE".upper(), f"{prefix}UNSUBSCRIBE".upper())
        # What Redis calls its pushes, as they come off the connection.
        self.kinds = tuple(f"{prefix}{kind}".encode()
                           for kind in ("message", "subscribe", "unsubscribe"))
        self.on_moved = on_moved  # Redis dropped a channel we want: its slot moved
        self.on_lost = on_lost  # the connection broke (a failover, perhaps)
        self.wanted: dict[str, str] = {}  # room channel -> room
        self.sent: set[str] = set()  # room channels SUBSCRIBEd on this connection
        self.confirmed: set[str] = set()  # channels Redis confirmed (control too)
        self.changed = asyncio.Event()
        self.subscribed = False  # the control channel is confirmed (a shard's link: connected)
        self.broken = False  # the last attempt failed, or the connection broke (readiness)
        self.channel_of: Callable[[str], str] = str  # set by the manager
        self.count = lambda: self.metrics.channels.set(len(self.confirmed))

    # -- what the manager wants (synchronous, from python-socketio's calls)
    def want(self, room: str) -> None:
        self.want_channel(self.channel_of(room), room)

    def drop(self, room: str) -> None:
        self.drop_channel(self.channel_of(room))

    def want_channel(self, channel: str, room: str) -> None:
        if channel not in self.wanted:
            self.wanted[channel] = room
            self.changed.set()

    def drop_channel(self, channel: str) -> None:
        if self.wanted.pop(channel, None) is not None:
            self.changed.set()

    # -- the connection ------------------------------------------------------
    async def messages(self):
        """Yield ``(channel, payload)`` forever, reconnecting as needed."""
        delay = RETRY_FIRST
        lost_at = time.monotonic()  # not subscribed yet counts as lost
        attempts = 0
        ever = False
        while True:
            pubsub = self.redis.pubsub()
            sync = None
            try:
                await self._subscribe_control(pubsub)
                self.subscribed, self.broken = True, False
                if ever:
                    self.metrics.reconnects.inc()
                self.log.info("backplane: subscribed %sto %s after %.1f s (%d attempts)",
                              "again " if ever else "", self.control or self.redis_name(),
                              time.monotonic() - lost_at, attempts + 1)
                ever, lost_at, attempts, delay = True, None, 0, RETRY_FIRST
                self.changed.set()  # every wanted room, on this new connection
                sync = asyncio.ensure_future(self._sync(pubsub))
                async for item in self._read(pubsub, sync):
                    yield item
            except (OSError, RedisError) as exc:
                self.subscribed, self.broken = False, True
                if self.on_lost is not None:
                    self.on_lost()
                if lost_at is None or attempts == 0:
                    lost_at = lost_at or time.monotonic()
                    self.log.warning("backplane: %s (%s); retrying every %.2f-%.1f s",
                                     "subscription lost" if ever else "cannot subscribe yet",
                                     str(exc) or type(exc).__name__, RETRY_FIRST, RETRY_MAX)
                attempts += 1
                await self._reset(pubsub, sync)
                sync = None
                # Jitter, so replicas do not all hit a returning Redis at once.
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, RETRY_MAX)
            finally:
                self.subscribed = False
                await self._reset(pubsub, sync)

    async def _reset(self, pubsub, sync) -> None:
        if sync is not None:
            sync.cancel()
            await asyncio.gather(sync, return_exceptions=True)
        self.sent.clear()
        self.confirmed.clear()
        self.count()
        with contextlib.suppress(OSError, RedisError):
            await pubsub.aclose()

    async def _subscribe_control(self, pubsub) -> None:
        """SUBSCRIBE the control channel and wait for Redis to confirm it:
        until then the replica is not really listening, and must not say so.
        A shard's link has no control channel: connected is ready."""
        if self.control is None:
            await pubsub.connect()
            return
        await pubsub.subscribe(self.control)
        deadline = time.monotonic() + CONFIRM_WITHIN
        while time.monotonic() < deadline:
            reply = await pubsub.get_message(timeout=0.2)
            if reply is not None and reply["type"] == "subscribe":
                self._confirmed(reply["channel"])
                return
        raise ConnectionError(f"SUBSCRIBE not confirmed within {CONFIRM_WITHIN} s")

    async def _sync(self, pubsub) -> None:
        """Send what changed in :attr:`wanted`, in batches, until cancelled.
        A failed write ends this task, and the reader, seeing it ended, starts
        over on a new connection.  (Closing the connection from here would
        not do: redis-py's next read would quietly open a new one, subscribed
        to nothing.)"""
        while True:
            await self.changed.wait()
            self.changed.clear()
            add = [c for c in self.wanted if c not in self.sent]
            remove = [c for c in self.sent if c not in self.wanted]
            try:
                subscribe, unsubscribe = self.commands
                for command, channels in ((subscribe, add), (unsubscribe, remove)):
                    for start in range(0, len(channels), BATCH):
                        batch = channels[start:start + BATCH]
                        await self._write(pubsub, command, batch)
                        if command == subscribe:
                            self.sent.update(batch)
                        else:
                            self.sent.difference_update(batch)
            except (OSError, RedisError) as exc:
                self.log.warning("backplane: could not change subscriptions: %s", exc)
                return

    async def _write(self, pubsub, command: str, channels: list[str]) -> None:
        """Write ``command`` for ``channels`` on the subscription connection
        (no answer is read: Redis confirms each channel with a push the reader
        sees).  One command for all on one Redis; on a Cluster, SSUBSCRIBE
        takes channels of one slot only, so one command per slot, all sent
        in one write."""
        connection = pubsub.connection
        if not self.sharded or len(channels) < 2:
            await connection.send_command(command, *channels, check_health=False)
            return
        by_slot: dict[int, list[str]] = {}
        for channel in channels:
            by_slot.setdefault(key_slot(channel.encode()), []).append(channel)
        packed = connection.pack_commands([(command, *group) for group in by_slot.values()])
        await connection.send_packed_command(packed, check_health=False)

    async def _read(self, pubsub, sync):
        """Yield published payloads, note confirmations, probe a silent link.

        Replies are read straight off the subscription's connection:
        redis-py's ``get_message`` wraps each one in a retry, a health check,
        a dict and a lookup of handlers, none of which this needs, and a
        replica reads a push per chat message of each of its rooms."""
        connection = pubsub.connection
        if connection is None:
            raise ConnectionError("the subscription has no connection")
        published, subscribed, unsubscribed = self.kinds
        received = self.metrics.received
        heard = time.monotonic()
        pinged = False
        while True:
            if sync.done():  # it failed to write: this connection is done for
                raise ConnectionError("could not change the subscriptions")
            # (None when a second passes in silence; an error when the
            # connection breaks, which messages() answers with a new one)
            reply = await connection.read_response(timeout=1.0, disconnect_on_error=False,
                                                   push_request=True)
            now = time.monotonic()
            if reply is not None:
                heard, pinged = now, False
                kind = reply[0] if isinstance(reply, list) and len(reply) == 3 else None
                if kind == published:
                    received.inc()
                    yield _text(reply[1]), reply[2]
                elif kind == subscribed:
                    self._confirmed(reply[1])
                elif kind == unsubscribed:
                    self._unsubscribed(_text(reply[1]))
                continue  # (a PONG, say: the link is alive)
            silent = now - heard
            if silent > DEAD_AFTER:
                raise ConnectionError(f"no answer from Redis for {silent:.0f} s")
            if silent > IDLE_PING and not pinged:
                await self._write(pubsub, "PING", [])
                pinged = True

    def _unsubscribed(self, channel: str) -> None:
        self.confirmed.discard(channel)
        self.count()
        if channel in self.wanted and self.on_moved is not None:
            # Not ours to drop: on a Cluster, Redis unsubscribes a shard
            # channel whose slot moved to another master.
            self.sent.discard(channel)
            self.on_moved(channel)

    def redis_name(self) -> str:
        kwargs = self.redis.connection_pool.connection_kwargs
        return f"{kwargs.get('host')}:{kwargs.get('port')}"

    def _confirmed(self, channel) -> None:
        channel = _text(channel)
        self.confirmed.add(channel)
        self.count()
        room = self.wanted.get(channel)
        if room is not None:
            self.on_confirmed([room])


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
