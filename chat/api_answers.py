"""The HTTP API's memory of its answers, by Idempotency-Key, for 24 hours.

A backend that got no answer to a ``POST`` (a timeout, a dropped connection)
sends it again with the same ``Idempotency-Key``; the API then answers what
it answered the first time and posts nothing.  Two layers make that hold:

* the message's id is derived from the API key and the Idempotency-Key, so
  two attempts racing each other, or a retry whose first answer was never
  remembered, are stored once by the room's history (``history.py``: an id
  is stored once while the room's log holds it);
* the first successful answer is remembered here for ``TTL`` seconds, so a
  retry still finds it after the log has moved on.

``RedisAnswers`` keeps them in Redis (``C:api:idem:<hash>``, with the TTL)
so that a retry reaching another replica finds them; ``MemoryAnswers``
keeps them in this process for the single node, at most ``MEMORY_MAX``.
Only successes are remembered: a failure ("not sent", "unknown") may be
retried and then succeed.
"""

from __future__ import annotations

import time

from . import jsonio
from .redis_keys import RedisKeys

TTL = 24 * 3600  # seconds a first answer is kept
MEMORY_MAX = 100_000  # answers kept by one single-node process


class MemoryAnswers:
    def __init__(self, ttl: float = TTL, most: int = MEMORY_MAX):
        self.ttl = ttl
        self.most = most
        self.answers: dict[str, tuple[float, dict]] = {}  # oldest first

    async def get(self, key: str) -> dict | None:
        found = self.answers.get(key)
        if found is None or found[0] <= time.monotonic():
            return None
        return found[1]

    async def keep(self, key: str, answer: dict) -> dict:
        """Remember ``answer`` unless one is remembered; return the one kept."""
        kept = await self.get(key)
        if kept is not None:
            return kept
        now = time.monotonic()
        while self.answers and (len(self.answers) >= self.most
                                or next(iter(self.answers.values()))[0] <= now):
            del self.answers[next(iter(self.answers))]
        self.answers[key] = (now + self.ttl, answer)
        return answer


class RedisAnswers:
    def __init__(self, client, keys: RedisKeys, ttl: float = TTL):
        self.redis = client
        self.keys = keys
        self.ttl = int(ttl)

    async def get(self, key: str) -> dict | None:
        raw = await self.redis.get(self.keys.api_answer(key))
        return None if raw is None else jsonio.loads(raw)

    async def keep(self, key: str, answer: dict) -> dict:
        name = self.keys.api_answer(key)
        if await self.redis.set(name, jsonio.dumps(answer), ex=self.ttl, nx=True):
            return answer
        kept = await self.redis.get(name)  # another attempt got there first
        return answer if kept is None else jsonio.loads(kept)
