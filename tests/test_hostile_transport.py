"""Issue 12, the transport's part: one hostile client, real replicas.

Each attack runs against a real gunicorn replica and checks what the issue
asks: the replica's memory growth bounded (a generous "did it happen at all"
bound, not a benchmark), the attacking connection closed, its log lines
bounded and none a traceback.  The figures are printed ("[hostile] ...")
for docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time

import aiohttp
import pytest
from raw_clients import (
    WS_PATH,
    RawWebSocket,
    Watch,
    closed_within,
    health,
    poll_session,
    post,
    rss_mib,
    until,
    ws_session,
)

pytestmark = [pytest.mark.slow, pytest.mark.hostile]

MIB = 2**20
FAST = {"MESSAGE_RATE": "1000", "MESSAGE_BURST": "1000"}


@pytest.fixture
def one(shared_clusters):
    """One replica in pubsub mode (as deployed in the issue's figures)."""
    cluster = shared_clusters(replicas=1, mode="pubsub", proxy=False, env=FAST)
    return cluster, cluster.replicas[0]


def assert_bounded(figures: dict, lines: int = 50, rss: float = 150) -> None:
    assert figures["tracebacks"] == 0
    assert figures["log_lines"] < lines, figures
    assert figures["rss_growth_mib"] < rss, figures


async def test_binary_attachments_are_refused(cluster_factory):
    # A replica of its own: memory another attack left resident would hide growth.
    cluster = cluster_factory(replicas=1, mode="pubsub", proxy=False, env=FAST)
    replica = cluster.replicas[0]
    watch = Watch(cluster, replica)
    chunk = b"\0" * 32_000
    async with aiohttp.ClientSession() as session:
        # Announced: a binary event with a huge attachment count, then frames.
        ws = await ws_session(session, replica.url, headers={"X-Real-IP": "10.1.0.1"})
        await ws.send_str('4599999-["message",{"_placeholder":true,"num":0}]')
        sent = 0
        started = time.monotonic()
        try:
            while time.monotonic() - started < 4:
                await ws.send_bytes(chunk)
                sent += 1
                if sent % 50 == 0:
                    watch.sample()
                    await asyncio.sleep(0)
        except (ConnectionError, aiohttp.ClientError):
            pass  # closed by the replica
        announced_closed = ws.closed or await closed_within(ws, 3)
        # Unannounced: a binary frame straight after connecting.
        ws = await ws_session(session, replica.url, headers={"X-Real-IP": "10.1.0.2"})
        await ws.send_bytes(chunk)
        unannounced_closed = await closed_within(ws, 3)
        # Announced over long-polling: refused before any attachment arrives.
    async with aiohttp.ClientSession(headers={"X-Real-IP": "10.1.0.8"}) as session:
        sid = await poll_session(session, replica.url)
        polled = await post(session, replica.url, sid,
                            '451-["message",{"_placeholder":true,"num":0}]')
    figures = watch.report(f"binary attachments ({sent} frames of 32 KB sent, "
                           f"{time.monotonic() - started:.1f} s)")
    assert announced_closed and unannounced_closed and polled == 400
    assert_bounded(figures)
    assert sum("binary" in line and "refused" in line for line in watch.new_lines()) == 3


@pytest.mark.parametrize("mode", ["socketio", "pubsub"])
async def test_a_client_that_does_not_read_is_disconnected(cluster_factory, connect, mode):
    cluster = cluster_factory(replicas=1, mode=mode, proxy=False, env=FAST)
    replica = cluster.replicas[0]
    room = f"busy-{secrets.token_hex(3)}"
    sender = await connect(replica.url, "sender", room=room)
    for i in range(100):  # a room of long messages
        await sender.sio.emit("message", {"text": f"{i} " + "y" * 1990})
    watch = Watch(cluster, replica)
    reader = RawWebSocket(replica.port)
    try:
        reader.send_text('40{"name":"sloth","room":"' + room + '"}')
        await until(lambda: health(replica.url)["clients"] == 2, 5)
        # Ask for the history again and again while the room is busy, and
        # read nothing: about 200 KB per answer, plus every message.
        for i in range(300):
            try:
                reader.send_text(f'42{i}["history",{{"after":0}}]')
            except OSError:
                break  # closed by the replica
            await sender.sio.emit("message", {"text": f"busy {i} " + "z" * 1900})
            if i % 20 == 0:
                await asyncio.sleep(0.05)
                watch.sample()
        left = await until(lambda: health(replica.url)["clients"] == 1, 10)
        # Closed by the replica while the client still reads nothing.
        cut = await until(lambda: reader.server_closed(replica.port), 5)
        figures = watch.report(f"a client that does not read ({mode})")
        assert left and cut
        assert await asyncio.to_thread(reader.closed_by_server, 10)
    finally:
        reader.close()
    assert_bounded(figures)
    assert sum("does not read" in line for line in watch.new_lines()) == 1
    assert (await sender.send("still here"))["ok"] is True


async def test_a_malformed_frame_closes_its_websocket(one):
    cluster, replica = one
    watch = Watch(cluster, replica)
    frames = 0
    async with aiohttp.ClientSession() as session:
        ws = await ws_session(session, replica.url, headers={"X-Real-IP": "10.1.0.3"})
        await ws.receive(timeout=5)  # connect
        try:
            for _ in range(2000):  # what used to be read and logged one by one
                await ws.send_str("42[")
                frames += 1
        except (ConnectionError, aiohttp.ClientError):
            pass
        closed = ws.closed or await closed_within(ws, 3)
    # A client that ignores the close handshake is cut off all the same.
    raw = RawWebSocket(replica.port)
    try:
        raw.send_text('40{"name":"deaf"}')
        await asyncio.sleep(0.2)
        raw.send_text("42[")
        raw_closed = await asyncio.to_thread(raw.closed_by_server, 3)
    finally:
        raw.close()
    figures = watch.report(f"malformed frames over WebSocket ({frames} sent)")
    assert closed and raw_closed
    assert_bounded(figures, lines=10)
    assert sum("malformed packet" in line for line in watch.new_lines()) == 2


async def test_events_before_an_accepted_connect_close_the_websocket(one):
    """Socket.IO's clients hold their emits until connected; a client that
    sends events first (never connecting, or after a refused CONNECT) is
    refused with one line, not one line per event."""
    cluster, replica = one
    watch = Watch(cluster, replica)
    frames = 0
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(replica.url + WS_PATH, headers={"X-Real-IP": "10.1.0.9"})
        await ws.receive(timeout=5)  # Engine.IO open, and no CONNECT
        try:
            for _ in range(2000):
                await ws.send_str('42["message",{"text":"hi"}]')
                frames += 1
        except (ConnectionError, aiohttp.ClientError):
            pass
        never = ws.closed or await closed_within(ws, 3)
        refused = await ws_session(session, replica.url, name="",  # a blank name
                                   headers={"X-Real-IP": "10.1.0.10"})
        await refused.send_str('42["message",{"text":"hi"}]')
        after_refusal = await closed_within(refused, 3)
    figures = watch.report(f"events before a CONNECT ({frames} sent)")
    assert never and after_refusal
    assert_bounded(figures, lines=10)
    assert sum("event before a CONNECT" in line for line in watch.new_lines()) == 2


async def test_a_client_that_talks_but_never_answers_a_ping_is_dropped(cluster_factory):
    """Frames keep coming, so the read loop never finds it silent: the ping
    it leaves unanswered past PING_TIMEOUT is what lets it go."""
    cluster = cluster_factory(replicas=1, mode="pubsub", proxy=False,
                              env={**FAST, "PING_INTERVAL": "1", "PING_TIMEOUT": "1"})
    replica = cluster.replicas[0]
    async with aiohttp.ClientSession() as session:
        ws = await ws_session(session, replica.url, name="deaf")
        pings, started = 0, time.monotonic()
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            while not ws.closed and time.monotonic() - started < 20:
                with contextlib.suppress(TimeoutError):
                    message = await ws.receive(timeout=0.3)
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    pings += message.data == "2"
                await ws.send_str('42["typing",{"typing":true}]')
        dropped_after = time.monotonic() - started
        print(f"\n[hostile] a client that never answers a ping: {pings} ping(s), dropped "
              f"after {dropped_after:.1f} s")
    assert pings >= 1 and dropped_after < 20


async def test_a_silent_websocket_client_is_dropped(cluster_factory):
    """A client that connects, then neither sends nor answers a ping (its
    TCP connection open, as when the far end vanishes without a FIN): its
    first unanswered ping drops it, and its seat in the room is freed."""
    cluster = cluster_factory(replicas=1, mode="pubsub", proxy=False,
                              env={**FAST, "PING_INTERVAL": "1", "PING_TIMEOUT": "1"})
    replica = cluster.replicas[0]
    async with aiohttp.ClientSession() as session:
        ws = await ws_session(session, replica.url, name="gone")
        started = time.monotonic()
        closed = await closed_within(ws, 15)
        dropped_after = time.monotonic() - started
        print(f"\n[hostile] a silent WebSocket client: dropped after {dropped_after:.1f} s")
        assert closed, "a client that never answered a ping was still connected after 15 s"
        assert await until(lambda: health(replica.url)["clients"] == 0, 10)


async def test_a_malformed_post_closes_its_polling_session(one):
    cluster, replica = one
    watch = Watch(cluster, replica)
    async with aiohttp.ClientSession(headers={"X-Real-IP": "10.1.0.4"}) as session:
        sid = await poll_session(session, replica.url)
        # Several packets in one body: the first malformed one ends it.
        first = await post(session, replica.url, sid, "\x1e".join(["42["] * 10))
        then = await post(session, replica.url, sid, '42["message",{"text":"hi"}]')
    figures = watch.report("malformed packets over long-polling")
    assert (first, then) == (400, 400)
    assert_bounded(figures, lines=10)
    assert sum("malformed packet" in line for line in watch.new_lines()) == 1


@pytest.mark.parametrize("body", [
    "\x1e".join(["2"] * 17),  # more packets than Engine.IO takes in one payload
    b"42[\"message\",{\"text\":\"\xff\xfe\"}]",  # invalid UTF-8
    "b" + "!" * 10,  # base64 that is not
    "9",  # not an Engine.IO packet type
    "0",  # one a client does not send (the library's disconnect then waited for a GET)
])
async def test_bad_polling_bodies_get_400_and_one_line(one, body):
    cluster, replica = one
    watch = Watch(cluster, replica)
    async with aiohttp.ClientSession(headers={"X-Real-IP": "10.1.0.5"}) as session:
        sid = await poll_session(session, replica.url)
        try:
            status = await asyncio.wait_for(post(session, replica.url, sid, body), 5)
        except TimeoutError:
            status = "no answer within 5 s"
    figures = watch.report(f"bad polling body {str(body)[:20]!r}: {status}")
    assert status == 400
    assert_bounded(figures, lines=10)


@pytest.mark.parametrize("frame", ["9", "", "x" * 100, "b!!!!", "4" + "[" * 2000])
async def test_frames_that_are_not_engineio_close_the_websocket(one, frame):
    cluster, replica = one
    watch = Watch(cluster, replica)
    async with aiohttp.ClientSession() as session:
        ws = await ws_session(session, replica.url, headers={"X-Real-IP": "10.1.0.7"})
        await ws.receive(timeout=5)  # connect
        await ws.send_str(frame)
        closed = await closed_within(ws, 3)
    figures = watch.report(f"WebSocket frame {frame[:10]!r}")
    assert closed
    assert_bounded(figures, lines=10)


@pytest.mark.parametrize("where", ["event", "auth"])
@pytest.mark.parametrize("payload", [
    "[" * 1100 + "]" * 1100,  # deeper than orjson's limit
    "[" * 40 + "]" * 40,  # deeper than ours
    "NaN",
])
async def test_json_is_equally_strict_everywhere(one, where, payload):
    cluster, replica = one
    watch = Watch(cluster, replica)
    async with aiohttp.ClientSession() as session:
        headers = {"X-Real-IP": "10.1.0.6"}
        if where == "auth":
            ws = await ws_session(session, replica.url, headers=headers,
                                  auth='{"name":"deep","x":' + payload + "}")
        else:
            ws = await ws_session(session, replica.url, headers=headers)
            await ws.receive(timeout=5)  # connect
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                for _ in range(200):  # the 200 frames
                    await ws.send_str('42["message",{"text":' + payload + "}]")
        closed = await closed_within(ws, 3)
    figures = watch.report(f"JSON {payload[:12]!r}… as {where}")
    assert closed
    assert_bounded(figures, lines=10)
    assert sum("not accepted JSON" in line for line in watch.new_lines()) == 1


async def test_log_lines_are_limited_per_client(one):
    """A flood from one address writes a few lines and a summary; another
    address's line still gets through."""
    cluster, replica = one
    watch = Watch(cluster, replica)
    flooder = {"X-Real-IP": f"10.2.{secrets.randbelow(250)}.1"}
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            ws = await ws_session(session, replica.url, headers=flooder)
            await ws.send_str("45x-[]")
            await closed_within(ws, 1)
        ws = await ws_session(session, replica.url, headers={"X-Real-IP": "10.3.0.1"})
        await ws.send_str("42[")
        await closed_within(ws, 3)
    watch.report("100 malformed connections from one address")
    # The chat's connect and disconnect lines (INFO, one each per
    # connection) are not counted: what one client causes is the warnings.
    lines = [line for line in watch.new_lines() if " INFO " not in line]
    print(f"[hostile] of which warnings: {len(lines)}")
    assert len(lines) < 50 and not any("Traceback" in line for line in lines)
    assert sum(flooder["X-Real-IP"] in line and "holding its lines back" in line
               for line in lines) == 1
    assert any("malformed packet" in line and "'2['" in line for line in lines)


async def test_the_replica_serves_on_after_the_attacks(one, connect):
    cluster, replica = one
    ana = await connect(replica.url, "ana")
    assert (await ana.send("after the attacks"))["ok"] is True
    assert rss_mib(replica.url) < 400
    log = (cluster.logs / f"{replica.server_id}.log").read_text()
    assert "Traceback" not in log
    print(f"\n[hostile] replica log after the group: {len(log.splitlines())} lines, "
          f"{json.dumps(health(replica.url))}")


async def test_a_polling_client_that_never_fetches_is_disconnected(cluster_factory, connect):
    cluster = cluster_factory(replicas=1, mode="pubsub", proxy=False, env=FAST)
    replica = cluster.replicas[0]
    room = f"busy-{secrets.token_hex(3)}"
    sender = await connect(replica.url, "sender", room=room)
    watch = Watch(cluster, replica)
    async with aiohttp.ClientSession() as session:
        sid = await poll_session(session, replica.url, name="sloth")
        assert await post(session, replica.url, sid, '42["join",{"room":"' + room + '"}]') == 200
        for i in range(800):  # about 1.6 MB for a client that never polls again
            await sender.sio.emit("message", {"text": f"{i} " + "q" * 1990})
            if i % 50 == 0:
                await asyncio.sleep(0.05)
                watch.sample()
        left = await until(lambda: health(replica.url)["clients"] == 1, 10)
        async with session.get(f"{replica.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
                               ) as response:
            status = response.status  # the session is gone
    figures = watch.report("a polling client that never fetches")
    assert left and status == 400
    assert_bounded(figures)
    assert sum("does not read" in line for line in watch.new_lines()) == 1
