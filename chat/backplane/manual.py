"""The "manual" mode: Redis PUBLISH/SUBSCRIBE written out by hand.

python-socketio splits a multi-server manager in two layers.  The base class
``socketio.AsyncPubSubManager`` turns every operation that may concern a
client on another replica into a message (a dict with a ``method`` and the
sender's ``host_id``) and replays other hosts' messages locally.  A transport
subclass supplies only two hooks: ``_publish(message)`` and ``_listen()``.
This class is such a transport, written here so a reader can see every step
that the automatic mode (``automatic.py``, the library's own
``AsyncRedisManager``) does out of sight, and so that we decide how fast it
recovers.

One chat message through three replicas::

    client A --ws--> replica 1  ChatNamespace.on_message
        history.append(room, msg)      # EVALSHA: numbered (seq) and stored
        sio.emit("message", msg, room="general")
        AsyncPubSubManager.emit
          1. _handle_emit(message)     # handle in this host: replica 1's own
                                       # sockets in "general" get it now,
                                       # through the room's Sequencer
          2. _publish(message)         # PUBLISH chat:messages <json>  (here)
    Redis sends the payload to every subscriber of chat:messages, replica 1
    included.
    replicas 1, 2, 3  _listen()        # SUBSCRIBE loop yields it      (here)
        AsyncPubSubManager._thread     # json-decodes; replica 1 drops it
                                       # (its own host_id); 2 and 3 go on
          _handle_emit(message)        # Sequencer: in seq order, once, to
                                       # their sockets in "general"

The same path carries the other methods the base class routes: an emit to one
sid or with ``skip_sid``; ``callback`` (the answer to an ack requested by a
replica that does not hold the sid, addressed back to that replica's
host_id); ``enter_room``, ``leave_room`` and ``disconnect`` for a sid held by
another replica, acted on only by the replica that holds it.

Failure handling, which is what this file adds over the library:

* ``_publish`` raises ``BackplaneUnavailable`` when Redis does not take the
  message (redis-py retries once on a broken connection).  By then the
  message is stored in the room's history (``chat/history.py``), so the
  sender is still told "ok": other replicas read it from the history within
  a second or two (``chat/delivery.py``).  The same covers a message
  published while some replica is not subscribed, e.g. right after Redis
  comes back: pub/sub is the fast path, the history the guarantee.  (Before
  the history existed, this class refused to publish until every replica
  had had time to resubscribe, and told senders their message stayed local.)
* ``_listen`` owns its reconnect loop: when the subscription breaks it retries
  after 50 ms, doubling up to 500 ms (with jitter), so it is subscribed again
  within about half a second of Redis coming back (the library waits up to
  60 s).  "Subscribed" means Redis confirmed the SUBSCRIBE.  Losing and
  regaining the subscription are logged once each, and counted.
* A subscription that goes silent is probed with PING; no answer within
  ``DEAD_AFTER`` seconds counts as a lost connection, so a half-open TCP
  connection cannot leave the replica deaf forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

from redis.exceptions import RedisError
from socketio.async_pubsub_manager import AsyncPubSubManager

from ..redis_clients import ping, redis_client
from .base import BackplaneUnavailable, Observed

RETRY_FIRST = 0.05  # seconds before the first resubscribe attempt
RETRY_MAX = 0.5  # cap of the doubling backoff
CONFIRM_WITHIN = 2.0  # seconds Redis has to confirm a SUBSCRIBE
IDLE_PING = 5.0  # PING the subscription after this long without traffic
DEAD_AFTER = 12.0  # ... and give it up after this long without any answer


class ManualRedisManager(Observed, AsyncPubSubManager):
    name = "chat-pubsub"

    def __init__(self, url, *, channel, client_name, metrics, logger=None,
                 max_connections=32):
        super().__init__(channel=channel, logger=logger, metrics=metrics)
        # One client, two uses: its bounded pool serves PUBLISH and PING, and
        # gives each subscription its dedicated connection.
        self.redis = redis_client(url, client_name, max_connections)
        self.subscribed = False
        self._publish_failing = False

    # -- transport hook 1: send ------------------------------------------
    async def _publish(self, message):
        payload = self.json.dumps(message)
        try:
            # redis-py retries once on a broken connection (redis_options)
            await self.redis.publish(self.channel, payload)
        except (OSError, RedisError) as exc:
            self.metrics.publish_failures.inc()
            if not self._publish_failing:
                self._publish_failing = True
                self._get_logger().warning("backplane: PUBLISH failed: %s", exc)
            raise BackplaneUnavailable(f"Redis is unreachable ({exc})") from None
        self.metrics.published.inc()
        if self._publish_failing:
            self._publish_failing = False
            self._get_logger().info("backplane: PUBLISH works again")

    # -- transport hook 2: receive ---------------------------------------
    async def _listen(self):
        delay = RETRY_FIRST
        lost_at = time.monotonic()  # not subscribed yet counts as lost
        attempts = 0
        ever = False
        while True:
            pubsub = self.redis.pubsub()
            try:
                await self._subscribe(pubsub)
                self.subscribed = True
                if ever:
                    self.metrics.reconnects.inc()
                self._get_logger().info(
                    "backplane: subscribed %sto %s after %.1f s (%d attempts)",
                    "again " if ever else "", self.channel,
                    time.monotonic() - lost_at, attempts + 1)
                ever, lost_at, attempts, delay = True, None, 0, RETRY_FIRST
                async for data in self._messages(pubsub):
                    yield data
            except (OSError, RedisError) as exc:
                self.subscribed = False
                if lost_at is None or attempts == 0:
                    lost_at = lost_at or time.monotonic()
                    self._get_logger().warning(
                        "backplane: %s (%s); retrying every %.2f-%.1f s",
                        "subscription lost" if ever else "cannot subscribe yet",
                        exc or type(exc).__name__, RETRY_FIRST, RETRY_MAX)
                attempts += 1
                await _close_quietly(pubsub)
                # Jitter, so replicas do not all hit a returning Redis at once.
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, RETRY_MAX)
            finally:
                self.subscribed = False
                await _close_quietly(pubsub)

    async def _subscribe(self, pubsub) -> None:
        """SUBSCRIBE and wait for Redis to confirm it.

        redis-py only writes the command; until the confirmation arrives the
        replica is not really listening, and must not say it is.
        """
        await pubsub.subscribe(self.channel)
        deadline = time.monotonic() + CONFIRM_WITHIN
        while time.monotonic() < deadline:
            reply = await pubsub.get_message(timeout=0.2)
            if reply is not None and reply["type"] == "subscribe":
                return
        raise ConnectionError(f"SUBSCRIBE not confirmed within {CONFIRM_WITHIN} s")

    async def _messages(self, pubsub):
        """Yield the payloads published on the channel, probing a silent link."""
        heard = time.monotonic()
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if message is not None:
                heard, pinged = now, False
                if message["type"] == "message":
                    self.metrics.received.inc()
                    yield message["data"]
                continue
            silent = now - heard
            if silent > DEAD_AFTER:
                raise ConnectionError(f"no answer from Redis for {silent:.0f} s")
            if silent > IDLE_PING and not pinged:
                await pubsub.ping()
                pinged = True

    # -- what the rest of the app asks -----------------------------------
    async def ready(self):
        if not self.subscribed:
            return False, "not subscribed to the Redis channel"
        if not await ping(self.redis):
            return False, "Redis does not answer PING"
        return True, "subscribed"

    async def close(self):
        await super().close()
        await self.redis.aclose()


async def _close_quietly(pubsub) -> None:
    with contextlib.suppress(OSError, RedisError):
        await pubsub.aclose()
