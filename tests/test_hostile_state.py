"""Attacks by one client on the chat's state (issue 12), against real replicas.

Each test plays the attacker with raw HTTP/WebSocket where the Socket.IO
client would be too polite, against replica processes and a real Redis
(both modes), then looks for what the attack left behind:

* ghosts: a session closed while its connect handler still runs (Engine.IO
  CLOSE posted with the Socket.IO CONNECT, or the TCP connection dropped
  right after the CONNECT) must leave no client counted by ``/healthz``, no
  presence entry (local or in Redis), no room membership;
* a departure is never undone by a concurrent presence refresh;
* reserved room names (Socket.IO sids) are refused, and a refused join
  leaves the client where it was.

Rooms and Redis resources are in ``test_hostile_rooms.py``.
"""

from __future__ import annotations

import asyncio
import json
import secrets

import aiohttp
import pytest
import redis
from leftovers import (
    ENV,
    TTL,
    connected_gauge,
    health,
    polling_connect_and_close,
    presence_key,
    settle,
    websocket_connect_and_drop,
    websocket_visit,
)

pytestmark = [pytest.mark.slow, pytest.mark.hostile]

ATTEMPTS = 100


async def attack(replicas, how, room: str, attempts: int = ATTEMPTS) -> None:
    # One TCP connection per request, so the CLOSE never waits behind the CONNECT.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(
            how(session, replicas[i % len(replicas)].url, f"{room}-{i}", room)
            for i in range(attempts)), return_exceptions=True)


@pytest.mark.parametrize("transport", ["polling", "websocket"])
async def test_a_session_closed_while_connecting_leaves_no_ghost(
        shared_clusters, connect, mode, transport):
    cluster = shared_clusters(replicas=3, mode=mode, proxy=False, env=ENV)
    replicas = cluster.replicas
    room = f"ghosts-{transport}-{secrets.token_hex(3)}"
    how = polling_connect_and_close if transport == "polling" else websocket_connect_and_drop
    await attack(replicas, how, room)

    def clean():
        return all(health(r)["clients"] == 0 for r in replicas)

    await settle(clean)
    # One refresh period more: a ghost's entry would be written back by now.
    await asyncio.sleep(TTL / 3 + 0.5)
    counts = {r.server_id: health(r)["clients"] for r in replicas}
    gauges = {r.server_id: connected_gauge(r) for r in replicas}
    admin = redis.Redis.from_url(cluster.redis_url)
    try:
        in_redis = admin.zcard(presence_key(room))
    finally:
        admin.close()
    print(f"\n{mode}/{transport}: {ATTEMPTS} attempts left clients {counts}, "
          f"gauge {gauges}, {in_redis} presence entries in Redis")
    assert counts == {r.server_id: 0 for r in replicas}
    assert gauges == {r.server_id: 0 for r in replicas}
    assert in_redis == 0
    # Every connect handler that ran was matched by a disconnect handler (which
    # also takes the sid out of its rooms), and the attack did reach them.
    lines = [line for r in replicas
             for line in (cluster.logs / f"{r.server_id}.log").read_text().splitlines()
             if f"name='{room}-" in line]
    connects = sum(" connect " in line for line in lines)
    disconnects = sum(" disconnect " in line for line in lines)
    print(f"{connects} connect handlers ran, {disconnects} disconnect handlers")
    assert connects > 0 and disconnects == connects
    # Nothing is written to the closed sessions (Engine.IO would log each try).
    assert not [line for r in replicas
                for line in (cluster.logs / f"{r.server_id}.log").read_text().splitlines()
                if "Cannot send to sid" in line]
    for replica in replicas:
        witness = await connect(replica.url, f"witness-{replica.server_id}", room=room)
        answer = await witness.sio.call("presence", {})
        assert [p["name"] for p in answer["presence"]] == [witness.name]
        await witness.sio.disconnect()


async def test_a_refresh_never_brings_back_someone_who_left(shared_clusters, connect, mode):
    """Connect/disconnect cycles on every replica while each refreshes its
    presence entries every third of a second: each departure is announced
    once, and nobody who left is listed again (a written-back entry would
    expire later and be announced as leaving a second time)."""
    cluster = shared_clusters(replicas=3, mode=mode, proxy=False, env={"PRESENCE_TTL": "1"})
    replicas = cluster.replicas
    room = f"churn-{secrets.token_hex(3)}"
    # Members in other rooms first: a refresh then writes those rooms before
    # this one, which widens the time between its snapshot and its write.
    for replica in replicas:
        for i in range(8):
            # One name per person: open mode refuses a second "calm0" in a room.
            await connect(replica.url, f"calm{i}-{replica.server_id}", room=f"{room}-calm{i}")
    witness = await connect(replicas[0].url, "witness", room=room)
    admin = redis.Redis.from_url(cluster.redis_url)
    seen_after_leaving: set[str] = set()
    left: set[str] = set()

    async def watch():
        while True:
            for raw in admin.zrange(presence_key(room), 0, -1):
                pid = json.loads(raw)[0]
                if pid in left:
                    seen_after_leaving.add(pid)
            await asyncio.sleep(0.02)

    async def churn(worker: int, cycles: int):
        async with aiohttp.ClientSession() as session:
            for i in range(cycles):
                url = replicas[(worker + i) % len(replicas)].url
                pid = await websocket_visit(session, url, f"c{worker}-{i}", room)
                await asyncio.sleep(0.3)  # the disconnect handler has run by now
                left.add(pid)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.gather(*(churn(w, 40) for w in range(12)))
        await asyncio.sleep(2.5)  # a written-back entry lives one TTL, then expires
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        in_redis = admin.zcard(presence_key(room))
        admin.close()
    lefts: dict[str, int] = {}
    for event in witness.presence:
        for p in event["left"]:
            lefts[p["id"]] = lefts.get(p["id"], 0) + 1
    twice = sorted(pid for pid, n in lefts.items() if n > 1)
    print(f"\n{mode}: {len(left)} cycles; {len(seen_after_leaving)} listed after leaving, "
          f"{len(twice)} announced as leaving twice")
    assert not seen_after_leaving
    assert not twice
    assert in_redis == 1  # the witness


async def test_a_room_named_after_a_sid_is_refused_and_the_client_stays(
        shared_clusters, connect, mode):
    """python-socketio puts each sid in a room of that name: joining it would
    deliver into that client's private room (on another replica) or fail
    halfway (on the same one).  Such names are refused before the client
    leaves its room; a refused join, for any reason, leaves it where it was."""
    from conftest import ChatClient

    replicas = shared_clusters(replicas=3, mode=mode, proxy=False, env=ENV).replicas
    room = f"stay-{secrets.token_hex(3)}"
    victim = await connect(replicas[1].url, "victim", room=f"{room}-v")
    witness = await connect(replicas[2].url, "witness", room=room)
    target = victim.welcome["sid"]
    for replica in (replicas[0], replicas[1]):  # another replica, and the victim's
        mallory = await connect(replica.url, f"mallory-{replica.server_id}", room=room)
        ack = await mallory.sio.call("join", {"room": target}, timeout=5)
        assert ack["ok"] is False and "reserved" in ack["error"]
        ack = await mallory.send(f"for {target}?")
        assert ack["ok"] is True  # sent to the room it is still in
        await witness.wait_for(lambda m=mallory: f"for {target}?" in witness.texts()
                               and len(witness.messages) == 1)
        answer = await mallory.sio.call("presence", {})
        assert answer["room"] == room
        assert sorted(p["name"] for p in answer["presence"]) == sorted(
            [mallory.name, "witness"])
        await mallory.sio.disconnect()
        witness.messages.clear()
    assert (await victim.send("barrier"))["ok"]
    await victim.wait_for(lambda: "barrier" in victim.texts())
    assert victim.texts() == ["barrier"]

    refused = ChatClient("mallory")
    with pytest.raises(Exception):  # noqa: B017 (socketio's ConnectionError)
        await refused.connect(replicas[0].url, room=target)
    assert "reserved" in refused.refusal["message"]


def test_every_sid_the_library_makes_is_a_reserved_room_name():
    """The rule in chat/protocol.py matches the ids Engine.IO generates (a
    library that changed its ids would fail here, not in production)."""
    import engineio

    from chat.protocol import ProtocolError, clean_room

    server = engineio.AsyncServer()
    for _ in range(2000):
        with pytest.raises(ProtocolError, match="reserved"):
            clean_room(server.generate_id())
    assert clean_room("engineering") == "engineering"
