"""What a session leaves behind: raw Engine.IO and Socket.IO sessions that
connect and vanish (where the python-socketio client would be too polite),
and looks at what a replica and Redis hold afterwards (the state tests of the
hostile group: test_hostile_state.py, test_hostile_rooms.py)."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import aiohttp

from chat.redis_keys import RedisKeys
from chat.settings import Settings

TTL = 3.0
ENV = {"PRESENCE_TTL": str(TTL)}


def health(replica) -> dict:
    with urllib.request.urlopen(f"{replica.url}/healthz", timeout=5) as response:
        return json.loads(response.read())


def connected_gauge(replica) -> float:
    with urllib.request.urlopen(f"{replica.url}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("chat_connected_clients{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no chat_connected_clients in /metrics")


def presence_key(room: str) -> str:
    return RedisKeys(Settings.redis_channel).room_presence(room)


def auth_packet(name: str, room: str) -> str:
    """An Engine.IO MESSAGE carrying a Socket.IO CONNECT with ``auth``."""
    return "40" + json.dumps({"name": name, "room": room})


async def polling_connect_and_close(session: aiohttp.ClientSession, url: str,
                                    name: str, room: str) -> None:
    """Open a long-polling session, then POST CONNECT and CLOSE at once."""
    base = f"{url}/socket.io/?EIO=4&transport=polling"
    async with session.get(base) as response:
        opened = await response.text()
    sid = json.loads(opened[1:])["sid"]
    target = f"{base}&sid={sid}"

    async def post(body: str):
        async with session.post(target, data=body.encode()) as response:
            await response.read()

    await asyncio.gather(post(auth_packet(name, room)), post("1"), return_exceptions=True)


async def websocket_connect_and_drop(session: aiohttp.ClientSession, url: str,
                                     name: str, room: str) -> None:
    """Open a WebSocket session, send CONNECT, and drop the TCP connection."""
    ws = await session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
    await ws.receive()  # Engine.IO OPEN
    await ws.send_str(auth_packet(name, room))
    ws._response.connection.transport.abort()  # no close frame: the TCP just goes
    await ws.close()


async def settle(predicate, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def websocket_visit(session: aiohttp.ClientSession, url: str, name: str,
                          room: str) -> str:
    """Connect over a raw WebSocket, wait for the welcome, leave; return the
    presence id the welcome gave."""
    async with session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket") as ws:
        await ws.receive()  # Engine.IO OPEN
        await ws.send_str(auth_packet(name, room))
        async for frame in ws:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                break
            if frame.data.startswith('42["welcome"'):
                return json.loads(frame.data[2:])[1]["id"]
            if frame.data.startswith("44"):
                raise AssertionError(f"refused: {frame.data}")
    raise AssertionError("no welcome")


async def refused_reason(url: str, room: str) -> str | None:
    """Connect with ``room``; the connect_error's message, or None if let in."""
    from conftest import ChatClient

    client = ChatClient("roomer")
    try:
        await client.connect(url, room=room)
    except Exception:  # socketio's ConnectionError
        return (client.refusal or {}).get("message", "no reason")
    await client.sio.disconnect()
    return None


async def stays_in(client, room: str) -> None:
    """``client`` is in ``room``: listed there, and its message goes there."""
    answer = await client.sio.call("presence", {})
    assert answer["room"] == room
    assert client.name in [p["name"] for p in answer["presence"]]
    ack = await client.send("still here")
    assert ack["ok"] is True
    await client.wait_for(lambda: any(m["text"] == "still here" and m["room"] == room
                                      for m in client.messages))
