"""Attacks by one client on the chat's state (issue 12), against real replicas.

Each test plays the attacker with raw HTTP/WebSocket where the Socket.IO
client would be too polite, against replica processes and a real Redis, then
looks for what the attack left behind: clients still counted by ``/healthz``,
presence entries (local and in Redis), rooms and keys, Redis connections.

* ghosts: a session closed while its connect handler still runs (Engine.IO
  CLOSE posted with the Socket.IO CONNECT, or the TCP connection dropped
  right after the CONNECT) must leave nothing behind;
* rooms: entering rooms costs tokens, their number is capped, and the Redis
  keys of a room that never had a message go away quickly;
* the Redis connection pool is bounded;
* reserved room names (Socket.IO sids) are refused, and a failed join
  leaves the client where it was;
* a departure is never undone by a concurrent presence refresh.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request

import aiohttp
import pytest
import redis

pytestmark = [pytest.mark.slow, pytest.mark.hostile]

TTL = 3.0
ENV = {"PRESENCE_TTL": str(TTL)}
ATTEMPTS = 100


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
    return f"chat:messages:room:{room}:presence"


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


async def attack(replicas, how, room: str, attempts: int = ATTEMPTS) -> None:
    # One TCP connection per request, so the CLOSE never waits behind the CONNECT.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(
            how(session, replicas[i % len(replicas)].url, f"{room}-{i}", room)
            for i in range(attempts)), return_exceptions=True)


async def settle(predicate, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


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
    for replica in replicas:
        witness = await connect(replica.url, f"witness-{replica.server_id}", room=room)
        answer = await witness.sio.call("presence", {})
        assert [p["name"] for p in answer["presence"]] == [witness.name]
        await witness.sio.disconnect()


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
            await connect(replica.url, f"calm{i}", room=f"{room}-calm{i}")
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


async def test_new_rooms_cost_a_token_per_address_and_replica(shared_clusters, connect):
    replicas = shared_clusters(replicas=2, mode="pubsub", proxy=False,
                               env={"ROOMS_PER_MINUTE": "4"}).replicas
    tag = secrets.token_hex(3)
    home = await connect(replicas[0].url, "home", room=f"{tag}-0")  # the first new room
    for i in range(1, 4):
        assert await refused_reason(replicas[0].url, f"{tag}-{i}") is None
    reason = await refused_reason(replicas[0].url, f"{tag}-4")
    assert reason is not None and "too many new rooms" in reason
    ack = await home.sio.call("join", {"room": f"{tag}-5"}, timeout=5)
    assert ack["ok"] is False and "too many new rooms" in ack["error"]
    await stays_in(home, f"{tag}-0")
    # Rooms entered within the minute cost nothing again (reconnections).
    assert await refused_reason(replicas[0].url, f"{tag}-1") is None
    ack = await home.sio.call("join", {"room": f"{tag}-2"}, timeout=5)
    assert ack["ok"] is True
    # Counted per replica: the other one has its own allowance.
    assert await refused_reason(replicas[1].url, f"{tag}-6") is None


async def test_live_rooms_are_capped_per_replica(shared_clusters, connect):
    replica = shared_clusters(replicas=1, mode="pubsub", proxy=False,
                              env={"MAX_ROOMS": "3"}).replicas[0]
    tag = secrets.token_hex(3)
    first = await connect(replica.url, "first", room=f"{tag}-a")
    await connect(replica.url, "second", room=f"{tag}-b")
    third = await connect(replica.url, "third", room=f"{tag}-c")
    reason = await refused_reason(replica.url, f"{tag}-d")
    assert reason is not None and "too many rooms" in reason
    ack = await first.sio.call("join", {"room": f"{tag}-d"}, timeout=5)
    assert ack["ok"] is False and "too many rooms" in ack["error"]
    await stays_in(first, f"{tag}-a")
    # A room that has people here may always be entered.
    assert await refused_reason(replica.url, f"{tag}-b") is None
    # A room nobody is in any more no longer counts.
    await third.sio.disconnect()
    assert await refused_reason(replica.url, f"{tag}-d") is None


def room_keys(admin, room: str) -> dict[str, tuple[int, int]]:
    """Each existing key of ``room``: (MEMORY USAGE bytes, TTL in seconds)."""
    out = {}
    for kind in ("meta", "log", "presence"):
        key = f"chat:messages:room:{room}:{kind}"
        if admin.exists(key):
            out[kind] = (admin.memory_usage(key, samples=0), admin.ttl(key))
    return out


async def test_a_room_without_messages_leaves_nothing_lasting(shared_clusters, connect, mode):
    from chat.history import EMPTY_EXPIRY_MS, IDLE_EXPIRY_MS

    cluster = shared_clusters(replicas=3, mode=mode, proxy=False, env=ENV)
    room = f"empty-{secrets.token_hex(3)}"
    admin = redis.Redis.from_url(cluster.redis_url)
    try:
        visitor = await connect(cluster.replicas[0].url, "visitor", room=room)
        empty = room_keys(admin, room)
        assert set(empty) == {"meta", "presence"}
        assert 0 < empty["meta"][1] <= EMPTY_EXPIRY_MS / 1000
        assert 0 < empty["presence"][1] <= 3 * TTL
        assert (await visitor.send("x" * 100))["ok"]
        written = room_keys(admin, room)
        for kind in ("meta", "log"):
            assert written[kind][1] > EMPTY_EXPIRY_MS / 1000
            assert written[kind][1] <= IDLE_EXPIRY_MS / 1000
        await visitor.sio.disconnect()
        await settle(lambda: "presence" not in room_keys(admin, room))
        left = room_keys(admin, room)
    finally:
        admin.close()
    print(f"\n{mode}: room keys (bytes, ttl s): empty {empty}; one message {written}; "
          f"after leaving {left}")
    assert set(left) == {"meta", "log"}


def connections_by_replica(admin, replicas) -> dict[str, int]:
    """Redis connections per replica, by the client names the replicas use."""
    clients = admin.client_list()
    return {r.server_id: sum(c.get("name", "").startswith(f"chat:{r.server_id}:")
                             for c in clients) for r in replicas}


POOL = 4


async def test_redis_connections_per_replica_are_bounded(shared_clusters, mode):
    cluster = shared_clusters(replicas=3, mode=mode, proxy=False,
                              env={"REDIS_MAX_CONNECTIONS": str(POOL)})
    replicas = cluster.replicas
    room = f"pool-{secrets.token_hex(3)}"
    admin = redis.Redis.from_url(cluster.redis_url)
    peak = {r.server_id: 0 for r in replicas}

    async def watch():
        while True:
            for name, count in connections_by_replica(admin, replicas).items():
                peak[name] = max(peak[name], count)
            await asyncio.sleep(0.05)

    async def visits(worker: int):
        async with aiohttp.ClientSession() as session:
            for i in range(10):
                await websocket_visit(session, replicas[(worker + i) % 3].url,
                                      f"p{worker}-{i}", room)

    watcher = asyncio.ensure_future(watch())
    try:
        # 300 connects, 30 at a time; each is a few Redis round trips.
        results = await asyncio.gather(*(visits(w) for w in range(30)),
                                       return_exceptions=True)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        after = connections_by_replica(admin, replicas)
        admin.close()
    print(f"\n{mode}: Redis connections per replica, peak {peak}, after {after} "
          f"(REDIS_MAX_CONNECTIONS={POOL}: two pools per replica)")
    assert [r for r in results if r is not None] == []  # every connect welcomed
    assert all(0 < n <= 2 * POOL for n in peak.values()), peak


async def test_an_exhausted_pool_says_so(cluster_factory, connect, mode):
    cluster = cluster_factory(replicas=1, mode=mode, proxy=False,
                              env={"REDIS_MAX_CONNECTIONS": str(POOL)})
    replica = cluster.replicas[0]
    clients = [await connect(replica.url, f"w{i}") for i in range(30)]
    admin = redis.Redis.from_url(cluster.redis_url)
    try:
        # Redis stalls: the pool's connections stay busy, the rest must wait.
        admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
        acks = await asyncio.gather(*(c.send("in the stall", timeout=10) for c in clients))
    finally:
        admin.close()
    log = (cluster.logs / f"{replica.server_id}.log").read_text()
    lines = [line for line in log.splitlines() if "Redis pool exhausted" in line]
    print(f"\n{mode}: {sum(not a['ok'] for a in acks)} of {len(acks)} refused; "
          f"pool lines: {lines[:1]}")
    assert all(a["ok"] is False for a in acks)
    assert 1 <= len(lines) <= 2
    assert f"all {POOL} Redis connections" in lines[0]
    assert "Traceback" not in log


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


def test_the_room_gate_counts_distinct_rooms_per_address_within_a_minute():
    from chat.protocol import ProtocolError
    from chat.rooms import MAX_ADDRESSES, RoomGate

    live: set[str] = set()
    gate = RoomGate(2, 3, occupied=live.__contains__, live=live.__len__)
    gate.admit("a", "r1", now=0)
    gate.admit("a", "r2", now=1)
    gate.admit("a", "r1", now=2)  # again within the minute: free
    with pytest.raises(ProtocolError, match="new rooms"):
        gate.admit("a", "r3", now=3)
    gate.admit("b", "r3", now=3)  # another address
    gate.admit("a", "r3", now=61.5)  # r2's minute is over (r1's was renewed at 2)
    with pytest.raises(ProtocolError, match="new rooms"):
        gate.admit("a", "r4", now=61.5)
    live.update({"x", "y", "z"})
    with pytest.raises(ProtocolError, match="too many rooms"):
        gate.admit("c", "new", now=63)
    gate.admit("c", "x", now=63)  # it has members: always open
    for i in range(MAX_ADDRESSES + 10):
        gate.admit(f"10.0.{i}", "x", now=64)
    assert len(gate.recent) == MAX_ADDRESSES
