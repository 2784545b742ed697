"""The backplane's pure choices, without Redis: which manager a mode gets,
and how the manual mode gives up a subscription that went silent.

The replica tests (``test_backplane.py``) pass in both modes whichever
manager runs, and a half-open TCP connection is hard to make for real; both
let mutants of ``chat/backplane`` survive (docs/testing.md), so they are
pinned here.  The silent subscription is a stand-in object with what the
subscriber's reader calls.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from chat.backplane import create_manager, subscriber
from chat.backplane.automatic import AutomaticRedisManager
from chat.backplane.manual import ManualRedisManager
from chat.backplane.memory import MemoryManager
from chat.metrics import Metrics
from chat.settings import Settings

URL = "redis://127.0.0.1:1/0"  # never connected to here


@pytest.mark.parametrize(("url", "mode", "kind"), [
    (None, "pubsub", MemoryManager),
    (URL, "pubsub", ManualRedisManager),
    (URL, "socketio", AutomaticRedisManager),
])
def test_each_mode_gets_its_manager(url, mode, kind):
    settings = Settings(redis_url=url, redis_mode=mode)
    manager = create_manager(settings, Metrics("t", settings.mode), logging.getLogger("test"))
    assert type(manager) is kind


class Silent:
    """A subscription that never says anything, not even PONG."""

    def __init__(self):
        self.pings = 0
        self.connection = self

    async def read_response(self, timeout, **_):
        await asyncio.sleep(0.02)
        return None

    async def send_command(self, *args, check_health=True):
        assert args == ("PING",)
        self.pings += 1


async def test_a_silent_subscription_is_pinged_then_given_up(monkeypatch):
    monkeypatch.setattr(subscriber, "IDLE_PING", 0.1)
    monkeypatch.setattr(subscriber, "DEAD_AFTER", 0.3)
    manager = ManualRedisManager(URL, channel="c", client_name="test",
                                 metrics=Metrics("t", "pubsub"))
    silent = Silent()
    started = asyncio.get_running_loop().time()
    with pytest.raises(ConnectionError, match="no answer from Redis"):
        async with asyncio.timeout(5):
            async for _ in manager.subscriber._read(silent, asyncio.Future()):
                pass
    assert silent.pings == 1
    assert asyncio.get_running_loop().time() - started >= 0.3
    await manager.redis.aclose()
