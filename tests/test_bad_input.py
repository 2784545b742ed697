"""Bad input gets a clear answer, and the replica keeps serving the others."""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request

import pytest
import socketio

pytestmark = pytest.mark.slow


@pytest.fixture
def replica(shared_clusters):
    return shared_clusters(replicas=1, mode="pubsub", proxy=False).replicas[0]


def _health(replica) -> dict:
    with urllib.request.urlopen(f"{replica.url}/healthz", timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.parametrize(("auth", "reason"), [
    (None, "connect with auth"),
    ({}, "connect with auth"),
    ({"name": 7}, "a name is required"),
    ({"name": "x" * 40}, "1 to 32 characters"),
    ({"name": "bell\x07"}, "printable"),
    ({"name": "ana", "room": ["a"]}, "room must be a string"),
])
async def test_refused_connection_says_why(replica, connect, auth, reason):
    from conftest import ChatClient

    client = ChatClient("refused")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(replica.url, auth=auth, transports=["websocket"],
                                 wait_timeout=5)
    assert reason in client.refusal["message"]
    assert _health(replica)["clients"] == 0


NOT_AN_OBJECT = 'message must be an object like {"text": "..."}'
NOT_A_STRING = "message text must be a string"


@pytest.mark.parametrize(("payload", "reason"), [
    (5, NOT_AN_OBJECT), ("text", NOT_AN_OBJECT), (None, NOT_AN_OBJECT),
    ([1, 2], NOT_AN_OBJECT), ({}, NOT_A_STRING), ({"text": 5}, NOT_A_STRING),
    ({"text": None}, NOT_A_STRING), ({"text": "   "}, "message text is empty"),
    ({"text": "x" * 2001}, "message text is longer than 2000 characters"),
])
async def test_malformed_message_gets_an_error_ack(replica, connect, payload, reason):
    room = f"bad-{secrets.token_hex(4)}"
    ana = await connect(replica.url, "ana", room=room)
    bystander = await connect(replica.url, "bia", room=room)
    ack = await ana.sio.call("message", payload, timeout=5)
    assert ack == {"ok": False, "error": reason}
    # Nothing of the refused message reached anyone: the next message is the
    # first and only one both see.
    assert (await ana.send("still fine"))["ok"] is True
    for client in (ana, bystander):
        await client.wait_for(lambda client=client: client.messages)
        assert client.texts() == ["still fine"] and client.seqs() == [1], client.name


async def test_unknown_events_and_extra_arguments(replica, connect):
    ana = await connect(replica.url, "ana")
    ack = await ana.sio.call("shout", {"text": "hi"}, timeout=5)
    assert ack == {"ok": False, "error": "unknown event 'shout'"}
    for reserved in ("connect", "disconnect"):
        ack = await ana.sio.call(reserved, {"name": "mallory"}, timeout=5)
        assert ack["ok"] is False
    assert (await ana.sio.call("join", 42, timeout=5))["ok"] is False
    # Extra positional arguments are ignored, not a crash.
    assert (await ana.sio.call("message", ({"text": "two args"}, "extra"), timeout=5))["ok"]
    assert await ana.sio.call("typing", "garbage", timeout=5) == {
        "ok": False, "error": 'typing needs {"typing": true} or {"typing": false}'}
    assert (await ana.sio.call("typing", {"typing": True}, timeout=5))["ok"]
    assert ana.welcome["name"] == "ana"  # the fake "connect" changed nothing


async def test_a_one_megabyte_frame_is_refused_and_others_carry_on(replica, connect):
    ana = await connect(replica.url, "ana")
    bystander = await connect(replica.url, "bia")
    with pytest.raises((socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError)):
        await ana.sio.call("message", {"text": "x" * 1_000_000}, timeout=3)
    await ana.wait_for(lambda: ana.disconnects)
    assert (await bystander.send("after the big one"))["ok"] is True
    assert bystander.texts()[-1:] == ["after the big one"] or await bystander.wait_for(
        lambda: "after the big one" in bystander.texts())


async def test_flood_of_connects_and_disconnects(replica, connect):
    bystander = await connect(replica.url, "bystander")

    async def cycle(i: int):
        client = socketio.AsyncClient(reconnection=False)
        name = f"flood{i}" if i % 5 else ""  # every fifth is refused
        try:
            await client.connect(f"{replica.url}?sticky={secrets.token_hex(4)}",
                                 auth={"name": name}, transports=["websocket"], wait_timeout=10)
        except socketio.exceptions.ConnectionError:
            return "refused"
        await client.disconnect()
        return "ok"

    for _ in range(4):
        results = await asyncio.gather(*(cycle(i) for i in range(50)))
        assert results.count("refused") == 10
    assert (await bystander.send("still here"))["ok"] is True
    await bystander.wait_for(lambda: "still here" in bystander.texts())

    async def settled():
        while _health(replica)["clients"] != 1:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(settled(), 10)
