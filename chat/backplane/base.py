"""What every backplane manager shares: counting, readiness and shutdown."""

from __future__ import annotations

import asyncio
import re
import uuid

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..metrics import Metrics


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
        "socket_timeout": 2.0,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 1),
    }


class BackplaneUnavailable(RuntimeError):
    """A message was delivered locally but could not reach the other replicas."""


class Observed:
    """Mixin placed before a python-socketio manager class.

    It counts the chat messages each emit writes to this replica's sockets,
    answers readiness, and knows how to stop its background work.
    """

    mode = "memory"

    def __init__(self, *args, metrics: Metrics, **kwargs):
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    def _count_local(self, event, namespace, room, skip_sid) -> None:
        if event != "message":
            return
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        count = sum(
            1 for sid, _ in self.get_participants(namespace or "/", room) if sid not in skip
        )
        self.metrics.delivered.inc(count)

    async def ready(self) -> tuple[bool, str]:
        """Return ``(ready, reason)``."""
        return True, "in-memory backplane"

    async def close(self) -> None:
        """Stop background tasks and close connections."""
        task = getattr(self, "thread", None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def client_name(server_id: str) -> str:
    """A Redis connection name unique to this process, readable by people."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", server_id)[:40]
    return f"chat:{safe}:{uuid.uuid4().hex[:8]}"


async def ping(client: aioredis.Redis, timeout: float = 1.0) -> bool:
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout))
    except (TimeoutError, OSError, aioredis.RedisError):
        return False
