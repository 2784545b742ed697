"""RedisHistory's reads against a real redis-server, in-process and quick.

The Sequencer fills holes and catches up through ``between`` and ``heads``;
the replica tests rarely make a hole of exactly one message, so the edges
are pinned here: "strictly between", a one-message hole, an empty room, the
keys' expiry.  Written to kill survivors of ``make mutation`` on
``chat/history.py`` (docs/testing.md).
"""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

from chat.history import IDLE_EXPIRY_MS, RedisHistory
from chat.redis_keys import RedisKeys


def numbered(text: str) -> dict:
    """A message as the service stores it: with an id of its own."""
    return {"id": secrets.token_hex(8), "text": text}


DAY_MS = 24 * 3600 * 1000


async def test_between_heads_and_expiry_at_their_edges(redis_factory):
    server = redis_factory()
    client = aioredis.Redis.from_url(server.url)
    history = RedisHistory(client, keys=RedisKeys("t"), length=100)
    try:
        stored = [await history.append("r", numbered(str(i))) for i in range(1, 5)]
        epoch = stored[0]["epoch"]
        assert [m["seq"] for m in stored] == [1, 2, 3, 4]

        assert [m["seq"] for m in await history.between("r", 1, 3)] == [2]  # one missing
        assert [m["seq"] for m in await history.between("r", 0, 5)] == [1, 2, 3, 4]
        assert await history.between("r", 2, 3) == []  # nothing in between
        assert {m["epoch"] for m in await history.between("r", 0, 5)} == {epoch}

        # A room only read so far has an epoch and no messages; one never
        # touched is not reported.
        empty = await history.tail("empty", 5)
        heads = await history.heads(["r", "empty", "untouched"])
        assert heads == {"r": (epoch, 4), "empty": (empty.epoch, 0)}

        # A room's history outlives 30 idle days (both keys).
        for key in (RedisKeys("t").room_meta("r"), RedisKeys("t").room_log("r")):
            assert IDLE_EXPIRY_MS - DAY_MS < await client.pttl(key) <= IDLE_EXPIRY_MS
        assert IDLE_EXPIRY_MS == 30 * DAY_MS
    finally:
        await client.aclose()
