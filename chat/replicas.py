"""Which replicas make up the chat, as any one of them sees it.

An operator wants one page with every replica's health, not a list of ports
to visit.  NGINX cannot ask every upstream and merge the answers, so the
replicas keep the list themselves: each one writes its own entry into one
Redis hash every ``PRESENCE_TTL / 3`` seconds, and ``GET /replicas`` on any
replica (NGINX proxies it) reads the whole hash::

    C:replicas   hash   server id -> {"server", "mode", "clients", "ready",
                                      "reason", "seen"}   (seen: epoch ms)

An entry not refreshed for ``PRESENCE_TTL`` seconds is shown as ``stale``
(the replica stopped, or cannot reach Redis); after ``FORGET_AFTER`` times
that it is removed.  A replica that stops cleanly removes its own entry.
Without Redis (one node in memory) the list is this replica alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from . import jsonio
from .history import as_text

FORGET_AFTER = 4  # PRESENCE_TTLs after which a silent replica leaves the list


class Registry:
    def __init__(self, client, *, key: str, server_id: str, ttl: float,
                 status: Callable[[], Awaitable[dict]], logger: logging.Logger):
        self.redis = client  # None: one node, no Redis
        self.key = key
        self.server_id = server_id
        self.ttl = ttl
        self.status = status  # this replica's {"mode", "clients", "ready", "reason"}
        self.log = logger

    async def entry(self) -> dict:
        return {"server": self.server_id, **await self.status(),
                "seen": int(time.time() * 1000)}

    async def publish(self) -> None:
        entry = await self.entry()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.key, self.server_id, jsonio.dumps(entry))
            pipe.pexpire(self.key, int(self.ttl * FORGET_AFTER * 1000))
            await pipe.execute()

    async def list(self) -> list[dict]:
        """Every replica's latest entry, this one's fresh, sorted by id."""
        mine = await self.entry()
        if self.redis is None:
            return [{**mine, "stale": False}]
        try:
            raw = await self.redis.hgetall(self.key)
        except (OSError, RedisError):
            return [{**mine, "stale": False, "others": "unknown: Redis does not answer"}]
        now = time.time() * 1000
        entries, forgotten = {self.server_id: mine}, []
        for server, value in raw.items():
            server = as_text(server)
            if server == self.server_id:
                continue
            entry = jsonio.loads(value)
            age = now - entry.get("seen", 0)
            if age > self.ttl * FORGET_AFTER * 1000:
                forgotten.append(server)
                continue
            entries[server] = {**entry, "stale": age > self.ttl * 1000}
        if forgotten:
            await self._quietly(self.redis.hdel(self.key, *forgotten))
        entries[self.server_id]["stale"] = False
        return [entries[s] for s in sorted(entries, key=_natural)]

    async def run(self) -> None:
        """Refresh this replica's entry every third of the TTL (a lifetime task)."""
        if self.redis is None:
            return
        while True:
            await self._quietly(self.publish())
            await asyncio.sleep(self.ttl / 3)

    async def close(self) -> None:
        if self.redis is not None:
            await self._quietly(self.redis.hdel(self.key, self.server_id))

    async def _quietly(self, operation) -> None:
        try:
            await operation
        except (OSError, RedisError) as exc:  # the next round tries again
            self.log.debug("replicas: %s", exc)


def _natural(server: str) -> tuple:
    """replica-2 before replica-10."""
    head, _, tail = server.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (server, 0)
