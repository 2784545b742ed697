"""Pubsub mode: a replica hears only the rooms it has members in, and a chat
message costs one Redis round trip (chat/backplane/manual.py).

Three replica processes on one real Redis, clients placed on the replica we
choose.  What a replica heard is read from its own metrics
(``chat_backplane_received``, ``chat_backplane_channels``) and from Redis
(``PUBSUB NUMSUB``: who listens on a room's channel).  The last test runs a
replica in this process, to hold its SUBSCRIBE back on purpose.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis
import socketio
from aiohttp import web
from wire import metric

from chat.appkeys import MANAGER
from chat.history import RedisHistory
from chat.protocol import chat_message
from chat.redis_clients import redis_client
from chat.redis_keys import RedisKeys
from chat.settings import Settings
from chat.tools.processes import free_port

pytestmark = pytest.mark.slow
KEYS = RedisKeys("chat:messages")


@pytest.fixture
def trio(shared_clusters):
    return shared_clusters(replicas=3, mode="pubsub", proxy=False)


def room(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(3)}"


def listeners(trio, name: str) -> int:
    client = redis.Redis.from_url(trio.redis_url)
    try:
        return client.pubsub_numsub(KEYS.room_channel(name))[0][1]
    finally:
        client.close()


async def until(check, timeout: float = 10.0):
    """Wait until ``check()`` (sync or async) is true."""
    async def loop():
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.05)
    await asyncio.wait_for(loop(), timeout)


async def test_a_replica_hears_nothing_of_rooms_it_has_nobody_in(trio, connect):
    r1, r2, r3 = trio.replicas
    talk, elsewhere = room("talk"), room("elsewhere")
    sender = await connect(r1.url, "ana", room=talk)
    reader = await connect(r2.url, "bia", room=talk)
    bystander = await connect(r3.url, "caio", room=elsewhere)
    await until(lambda: listeners(trio, talk) == 2)
    heard_before = await metric(r3.url, "chat_backplane_received")

    for n in range(20):
        assert (await sender.send(f"m{n}"))["ok"]
    await reader.wait_for(lambda: len(reader.texts()) == 20)

    assert reader.seqs() == list(range(1, 21))  # once each, in order, on the wire
    assert await metric(r3.url, "chat_backplane_received") == heard_before
    assert bystander.texts() == []
    # replica-3 still hears what is its own
    assert (await (await connect(r1.url, "dora", room=elsewhere)).send("hi"))["ok"]
    await bystander.wait_for(lambda: bystander.texts() == ["hi"])


async def test_a_chat_message_costs_its_sender_one_round_trip(trio, connect):
    r1, r2, _ = trio.replicas
    talk = room("talk")
    sender = await connect(r1.url, "ana", room=talk)
    reader = await connect(r2.url, "bia", room=talk)
    await until(lambda: listeners(trio, talk) == 2)
    await asyncio.sleep(0.3)  # presence news of the two arrivals goes out first
    published = await metric(r1.url, "chat_backplane_publishes")
    accepted = await metric(r1.url, "chat_messages_accepted")

    for n in range(10):
        assert (await sender.send(f"m{n}"))["ok"]
    await reader.wait_for(lambda: len(reader.texts()) == 10)

    # The append script stored and published each one: the sender's
    # replica published nothing of its own.
    assert await metric(r1.url, "chat_messages_accepted") == accepted + 10
    assert await metric(r1.url, "chat_backplane_publishes") == published
    assert sender.seqs() == reader.seqs() == list(range(1, 11))


async def test_subscriptions_follow_the_members(trio, connect):
    _, _, r3 = trio.replicas
    first, second = room("first"), room("second")
    channels = await metric(r3.url, "chat_backplane_channels")
    mover = await connect(r3.url, "eva", room=first)
    await until(lambda: listeners(trio, first) == 1)

    ack = await mover.sio.call("join", {"room": second})
    assert ack["ok"]
    await until(lambda: listeners(trio, first) == 0 and listeners(trio, second) == 1)
    assert await metric(r3.url, "chat_backplane_channels") == channels + 1

    await mover.sio.disconnect()
    await until(lambda: listeners(trio, second) == 0)
    await until(lambda: _equals(metric(r3.url, "chat_backplane_channels"), channels))


async def _equals(value, expected) -> bool:
    return await value == expected


async def test_every_room_is_subscribed_again_after_the_connection_breaks(trio, connect):
    r1, r2, _ = trio.replicas
    talk = room("talk")
    sender = await connect(r1.url, "ana", room=talk)
    reader = await connect(r2.url, "bia", room=talk)
    await until(lambda: listeners(trio, talk) == 2)
    reconnects = await metric(r2.url, "chat_backplane_reconnects")

    admin = redis.Redis.from_url(trio.redis_url)
    try:
        assert admin.client_kill_filter(_type="pubsub") >= 3
    finally:
        admin.close()
    assert (await sender.send("while they resubscribe"))["ok"]
    await until(lambda: listeners(trio, talk) == 2)
    assert (await sender.send("after"))["ok"]

    await reader.wait_for(lambda: reader.texts() == ["while they resubscribe", "after"])
    assert reader.seqs() == [1, 2]
    assert await metric(r2.url, "chat_backplane_reconnects") == reconnects + 1


async def test_a_message_sent_before_redis_confirms_the_subscription_arrives(
        redis_factory, monkeypatch):
    """A client enters a room that had nobody on its replica; while the
    replica's SUBSCRIBE is held back, another replica posts there.  That
    message was published to nobody: the replica reads it from the history
    when Redis confirms the subscription (catch-up off, so nothing else
    could bring it)."""
    store = redis_factory()
    from chat.app import create_app

    settings = Settings(redis_url=store.url, redis_mode="pubsub", server_id="here",
                        catch_up_every=0)
    app = create_app(settings)
    manager = app[MANAGER]
    held = asyncio.Event()
    release = asyncio.Event()
    write = manager.subscriber._write

    async def slow_write(pubsub, command, channels):
        if command == "SUBSCRIBE":
            held.set()
            await release.wait()
        await write(pubsub, command, channels)

    monkeypatch.setattr(manager.subscriber, "_write", slow_write)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = socketio.AsyncClient(reconnection=False)
    got: list[dict] = []
    client.on("message", got.append)
    other = redis_client(store.url, "elsewhere", 4)
    try:
        await until(lambda: manager.subscriber.subscribed)
        await client.connect(f"http://127.0.0.1:{port}", transports=["websocket"],
                             auth={"name": "ana", "room": "race"})
        await asyncio.wait_for(held.wait(), 5)

        elsewhere = RedisHistory(other, keys=KEYS, length=100, relay_host="elsewhere")
        stored = await elsewhere.append("race", chat_message(
            room="race", name="bia", text="said too early", server="elsewhere",
            id=secrets.token_hex(8)))
        release.set()

        await until(lambda: got)
        assert [(m["text"], m["seq"]) for m in got] == [("said too early", stored["seq"])]
    finally:
        release.set()
        await client.disconnect()
        await other.aclose()
        await runner.cleanup()
