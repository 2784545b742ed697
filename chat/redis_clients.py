"""Every Redis client of a replica is built here, from the settings.

A ``REDIS_URL`` names one of three topologies (``redis_url.py``), and
:func:`redis_client` gives the same face to each:

* one Redis: redis-py's client on a :class:`BoundedPool`;
* Sentinel: a client of the master the sentinels name now
  (:class:`SentinelMaster`).  Each new connection asks the sentinels first,
  so after a failover the next connection reaches the new master; until one
  is promoted, connecting fails with ``MasterNotFoundError`` (nothing sent);
* Cluster: redis-py's asyncio ``RedisCluster``, which sends each command to
  the master of its key's slot (a room's keys share one, ``redis_keys.py``)
  and follows ``MOVED``/``ASK`` on its own.

A replica holds two: the backplane manager's (PUBLISH, the subscription,
readiness) and the store's (history, presence, the replica registry).  Both
are named (``CLIENT LIST`` shows who is who, and readiness finds its own
subscription there), fail fast while Redis is down, and draw on a bounded
pool (:class:`BoundedPool`, ``REDIS_MAX_CONNECTIONS``).  They differ in one
thing: the store's client never sends a command twice (:func:`store_client`),
because an append that failed on an open connection may have run, and only
a command that never left tells the sender "not sent" truthfully.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from .redis_quick import quick
from .redis_url import parse_redis_url
from .settings import Settings


def redis_options(client_name: str) -> dict:
    """Options for the Redis connections both Redis modes open.

    Connecting must fail fast while Redis is down: the listeners and /readyz
    retry on their own schedule, and a publish must not hold up a client's
    messages for seconds.  redis-py's default (10 retries with backoff) would
    stall every publish for several seconds during an outage, so one
    immediate retry is allowed, enough to replace a connection Redis closed.
    """
    return {
        # Named, so that readiness can ask Redis whether our subscription is
        # among its pub/sub clients, and so an operator can see who is who.
        "client_name": client_name,
        "socket_connect_timeout": 1.0,
        "socket_timeout": 1.0,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 1),
    }


POOL_WAIT = 1.0  # seconds an operation waits for a free connection of a full pool
POOL_WARN_EVERY = 10.0  # seconds between two "pool exhausted" log lines per pool


class PoolExhausted(MaxConnectionsError):
    """Every connection of the pool stayed busy for ``POOL_WAIT`` seconds (no
    command was sent: a Redis ``ConnectionError``, and redis-py's own kind for
    a full pool)."""


class BoundedPool(aioredis.BlockingConnectionPool):
    """redis-py's blocking pool, whose exhaustion says what it is.

    Without a bound redis-py opens a connection per concurrent operation: a
    burst of connects (each one a few Redis round trips) left a hundred
    connections per replica open.  Bounded, a burst waits for a free
    connection; one that waits longer than ``POOL_WAIT`` fails with
    :class:`PoolExhausted` (a Redis ``ConnectionError``, so every caller
    already handles it as Redis not answering), logged at most once per
    ``POOL_WARN_EVERY`` seconds.
    """

    warned_at = float("-inf")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connection_class = quick(self.connection_class)  # (redis_quick.py)

    def _unwatched(self) -> bool:
        """Nobody waits for a connection, nor holds the pool's condition:
        connections may come and go without the condition, its timer and
        its notification (the usual case; a full pool takes redis-py's way)."""
        condition = self._condition
        return (not self._in_maintenance and not condition.locked()
                and not getattr(condition, "_waiters", True))

    async def get_connection(self, *args, **kwargs):
        if self._available_connections and self._unwatched():
            connection = self._available_connections.pop()
            self._in_use_connections.add(connection)
            try:
                # An open connection with nothing unread is ready as it is;
                # anything else is (re)connected and checked by redis-py.
                # One the server closed (a Redis restart) raises in
                # can_read() since redis-py 8.2, and is reconnected too.
                try:
                    ready = connection.is_connected and not await connection.can_read()
                except (RedisConnectionError, OSError):
                    ready = False
                if not ready:
                    await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
            return connection
        try:
            return await super().get_connection(*args, **kwargs)
        except RedisConnectionError as exc:
            if not isinstance(exc.__cause__, TimeoutError):
                raise
            name = self.connection_kwargs.get("client_name")
            problem = (f"all {self.max_connections} Redis connections of {name} busy for "
                       f"{self.timeout:g} s (REDIS_MAX_CONNECTIONS)")
            now = time.monotonic()
            if now - self.warned_at >= POOL_WARN_EVERY:
                self.warned_at = now
                logging.getLogger("chat.redis").warning("Redis pool exhausted: %s", problem)
            raise PoolExhausted(problem) from None

    async def release(self, connection) -> None:
        if self._unwatched() and getattr(connection, "_re_auth_token", None) is None:
            # Nobody to wake, no new credentials to present (redis-py's
            # event for that, and its metrics hooks, are all its release
            # adds here).
            self._in_use_connections.remove(connection)
            if connection.should_reconnect():
                await connection.disconnect()
            self._available_connections.append(connection)
            return
        await super().release(connection)


class BoundedSentinelPool(BoundedPool, SentinelConnectionPool):
    """:class:`BoundedPool`'s waiting and wording, with Sentinel's way of
    finding the master for every new connection."""

    def __init__(self, service_name, sentinel_manager, **kwargs):
        # BlockingConnectionPool would otherwise pick plain connections.
        kwargs.setdefault("connection_class", SentinelManagedConnection)
        super().__init__(service_name=service_name, sentinel_manager=sentinel_manager,
                         **kwargs)


class SentinelMaster(aioredis.Redis):
    """The master's client; closing it also closes its sentinels' clients."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        sentinels = getattr(self.connection_pool, "sentinel_manager", None)
        await super().aclose(close_connection_pool)
        if sentinels is not None:
            await sentinels.aclose()


def redis_client(url: str, client_name: str, max_connections: int,
                 **overrides) -> aioredis.Redis | RedisCluster:
    """A client of what ``url`` names (one Redis, a Sentinel-watched master,
    a Cluster), with :func:`redis_options` and ``overrides``; for one Redis
    and Sentinel on its own :class:`BoundedPool` (closed with the client),
    for a Cluster with at most ``max_connections`` per node."""
    options = {**redis_options(client_name), **overrides}
    target = parse_redis_url(url)
    credentials = {"username": target.username, "password": target.password}
    if target.topology == "sentinel":
        # The sentinels answer within the same short timeouts; the
        # credentials in the URL are the master's, not theirs.
        sentinels = Sentinel(list(target.nodes), sentinel_kwargs={
            k: v for k, v in options.items() if k.startswith("socket_")})
        return sentinels.master_for(
            target.service, redis_class=SentinelMaster, connection_pool_class=BoundedSentinelPool,
            max_connections=max_connections, timeout=POOL_WAIT, db=target.db,
            **credentials, **options)
    if target.topology == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            max_connections=max_connections, ssl=target.tls, **credentials, **options)
    pool = BoundedPool.from_url(url, max_connections=max_connections, timeout=POOL_WAIT,
                                **options)
    return aioredis.Redis.from_pool(pool)


def client_name(server_id: str) -> str:
    """A Redis connection name unique to this process, readable by people."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", server_id)[:40]
    return f"chat:{safe}:{uuid.uuid4().hex[:8]}"


async def ping(client: aioredis.Redis, timeout: float = 1.0) -> bool:
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout))
    except (TimeoutError, OSError, aioredis.RedisError):
        return False


def store_client(settings: Settings) -> aioredis.Redis:
    """The client of the room history, presence and the replica registry.

    No second attempt of a command on a fresh connection: a command that
    failed on an open connection may have run, and an append run twice is
    told apart only by its id.  A failure to connect means nothing was sent,
    which is what lets a sender be told "not sent" (history.py).
    """
    return redis_client(settings.redis_url, client_name(settings.server_id) + ":store",
                        settings.redis_max_connections, retry=Retry(NoBackoff(), 0))


def subscriber_client(url: str, client_name: str) -> aioredis.Redis:
    """The client of a pubsub-mode subscription (``backplane/subscriber.py``).

    No retry: on a broken connection redis-py would quietly reconnect and
    subscribe again only the channels it knows of, and ours are sent as
    raw commands.  The subscriber must see the break, and subscribe every
    room again itself.  No socket timeout either: the reader waits with its
    own timeouts, and a long quiet spell is normal.  RESP2 (redis-py 8
    speaks RESP3 by default): a published message is then a plain reply,
    where RESP3 makes it a push that redis-py's parser logs at DEBUG level,
    formatting every payload with str() whether or not anything is logged.
    """
    return redis_client(url, client_name + ":sub", 2, retry=Retry(NoBackoff(), 0),
                        socket_timeout=None, protocol=2)


def shard_client(node, client_name: str) -> aioredis.Redis:
    """A client of one Cluster node alone, for the sharded subscription's link
    to it (``backplane/shards.py``): the node's own address, credentials and
    TLS, and, like :func:`subscriber_client`, no retry and no read timeout."""
    kept = ("username", "password", "ssl", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile",
            "ssl_keyfile", "ssl_check_hostname")
    given = {k: v for k, v in node.connection_kwargs.items() if k in kept}
    options = {**redis_options(client_name + ":sub"), "retry": Retry(NoBackoff(), 0),
               "socket_timeout": None, "protocol": 2}
    if given.pop("ssl", False):
        options["connection_class"] = aioredis.SSLConnection
    else:
        given = {k: v for k, v in given.items() if not k.startswith("ssl")}
    pool = BoundedPool(host=node.host, port=node.port, max_connections=2, timeout=POOL_WAIT,
                       **given, **options)
    return aioredis.Redis.from_pool(pool)
