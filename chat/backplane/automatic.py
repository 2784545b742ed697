"""The "automatic" mode: python-socketio's own ``AsyncRedisManager``.

This is the one-line option, the counterpart of SignalR's
``AddStackExchangeRedis()``: the library publishes every emit to a Redis
channel and runs a listener that replays other replicas' emits locally.  We
keep its behaviour as shipped and only watch it:

* every publish and every message received is counted;
* the library swallows a failed publish (it logs and returns ``None``); we
  turn that into :class:`BackplaneUnavailable` so the sender's ack can say
  the message reached only this replica;
* each (re)connection it makes is counted and logged, and uses a bounded
  connection pool (``chat.redis_clients.BoundedPool``) instead of redis-py's unbounded one;
* readiness asks Redis itself whether this process's named connection is
  among its subscribers (CLIENT LIST TYPE pubsub): the library replaces its
  pubsub object on reconnects, so its own attributes cannot be trusted.

What it does not let us change is the listener's reconnect schedule: after a
Redis failure it sleeps 1, 2, 4 ... up to 60 seconds between attempts, so
after a long outage cross-replica delivery can lag Redis's return by up to a
minute.  The manual mode (``manual.py``) exists partly to fix that.
"""

from __future__ import annotations

import asyncio
import sys

import socketio
from redis.exceptions import RedisError, ResponseError

from ..logs import Throttle
from ..redis_clients import redis_client, redis_options
from .base import BackplaneUnavailable, Observed


class AutomaticRedisManager(Observed, socketio.AsyncRedisManager):
    def __init__(self, url, *, channel, client_name, metrics, logger=None,
                 max_connections=32):
        # The library logs two ERROR lines per failed publish; during an
        # outage that is two per chat message.  Its logger repeats itself at
        # most once per interval.
        if logger is not None:
            logger = logger.getChild("redis")
            if not any(isinstance(f, Throttle) for f in logger.filters):
                logger.addFilter(Throttle(interval=5.0))
        super().__init__(url, channel=channel, logger=logger,
                         redis_options=redis_options(client_name), metrics=metrics)
        self.client_name = client_name
        self.max_connections = max_connections
        self._connections = 0

    def _redis_connect(self):
        # What the library's own method does for a redis:// or
        # redis+sentinel:// URL (the master the sentinels name), with a
        # bounded pool (chat/redis_clients.py).
        self.redis = redis_client(self.redis_url, self.client_name, self.max_connections)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True
        # The library reconnects from two places: its listener, and every
        # failed publish.  Only the listener's (re)subscription is news.
        if sys._getframe(1).f_code.co_name == "_redis_listen_with_retries":
            self._connections += 1
            if self._connections > 1:
                self.metrics.reconnects.inc()
                self._get_logger().info("backplane: listener reconnecting to Redis")

    async def _publish(self, data):
        result = await super()._publish(data)
        if result is None:  # the library gave up after its retry
            self.metrics.publish_failures.inc()
            raise BackplaneUnavailable("Redis is unreachable")
        self.metrics.published.inc()
        return result

    async def _listen(self):
        async for message in super()._listen():
            self.metrics.received.inc()
            yield message

    async def ready(self):
        if self.redis is None:
            return False, "not connected to Redis yet"
        try:
            clients = await asyncio.wait_for(self.redis.client_list(_type="pubsub"), 1.0)
        except ResponseError as exc:
            if "NOPERM" not in str(exc):
                return False, f"Redis refused: {str(exc)[:120]}"
            # An ACL without CLIENT LIST (@admin): count subscribers instead,
            # which cannot tell whether one of them is us.
            numsub = await asyncio.wait_for(self.redis.pubsub_numsub(self.channel), 1.0)
            if numsub and numsub[0][1] > 0:
                return True, "channel has subscribers (CLIENT LIST not permitted)"
            return False, "no subscriber on the Redis channel"
        except (TimeoutError, OSError, RedisError):
            return False, "Redis does not answer"
        if not any(c.get("name") == self.client_name and int(c.get("sub", 0)) > 0
                   for c in clients):
            return False, "not subscribed to the Redis channel"
        return True, "subscribed"

    async def close(self):
        await super().close()
        if self.pubsub is not None:
            await self.pubsub.aclose()
        if self.redis is not None:
            await self.redis.aclose()
