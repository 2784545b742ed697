"""Issue 12: the decode paths fuzzed over both transports against a live
replica, history answers bounded in bytes, and ``python -m chat`` at its
file-descriptor limit.

Whatever a client sends, the replica stays up and answers ``/healthz``, its
log holds no traceback, and the lines one client causes stay bounded.
"""

from __future__ import annotations

import json
import resource
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_clients import WS_PATH, Watch, health, poll_session
from test_fuzz import LoopThread

from chat.tools.cluster import free_port, stop_pid

pytestmark = [pytest.mark.slow, pytest.mark.hostile]
FAST = {"MESSAGE_RATE": "1000", "MESSAGE_BURST": "1000"}


def nested(depth: int) -> str:
    return '42["message",{"text":' + "[" * depth + "]" * depth + "}]"


frames = st.one_of(
    st.binary(max_size=300),  # binary frames, invalid UTF-8
    st.text(max_size=300),
    st.integers(min_value=20, max_value=1500).map(nested),  # deep nesting
    st.lists(st.sampled_from(["2", "3", "6", "42[]", '42["message",{"text":"x"}]', "4x", "9"]),
             min_size=1, max_size=40).map("\x1e".join),  # many packets per payload
    st.builds(lambda kind, count, body: f"4{kind}{count}-{body}",  # binary packet types
              st.sampled_from(["5", "6"]), st.integers(0, 10**9),
              st.sampled_from(['["message",{"_placeholder":true,"num":0}]', "[]", "x"])),
    st.binary(min_size=1, max_size=50).map(lambda b: b'42["message",{"text":"' + b + b'"}]'),
)


async def one_frame(url: str, transport: str, frame) -> None:
    async with aiohttp.ClientSession() as session:
        if transport == "websocket":
            async with session.ws_connect(url + WS_PATH) as ws:
                await ws.receive(timeout=5)
                await ws.send_str('40{"name":"fuzz"}')
                await ws.receive(timeout=5)
                try:
                    if isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    else:
                        await ws.send_str(frame)
                    await ws.receive(timeout=0.5)
                except (TimeoutError, ConnectionError, aiohttp.ClientError):
                    pass
        else:
            sid = await poll_session(session, url, name="fuzz")
            async with session.post(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                                    data=frame) as response:
                assert response.status in (200, 400)


@pytest.fixture
def live(shared_clusters):
    cluster = shared_clusters(replicas=1, mode="pubsub", proxy=False, env=FAST)
    runner = LoopThread()
    yield cluster, cluster.replicas[0], runner
    runner.close()


def test_fuzzed_frames_leave_the_replica_serving_and_its_log_clean(live):
    cluster, replica, runner = live
    watch = Watch(cluster, replica)

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(transport=st.sampled_from(["websocket", "polling"]), frame=frames)
    def one(transport, frame):
        runner.run(one_frame(replica.url, transport, frame))
        assert health(replica.url)["status"] == "ok"

    one()
    figures = watch.report("300 fuzzed frames over WebSocket and long-polling")
    warnings = [line for line in watch.new_lines() if " INFO " not in line]
    print(f"[hostile] of which warnings: {len(warnings)}")
    assert figures["tracebacks"] == 0
    assert not any(" ERROR " in line for line in warnings), warnings[:5]
    # All of it came from one address: the per-client limit holds it to a
    # few lines a minute and a summary.
    assert len(warnings) < 50, warnings[-5:]


async def test_history_answers_are_bounded_in_bytes(shared_clusters, connect, mode):
    cap = 65_536
    cluster = shared_clusters(replicas=1, mode=mode, proxy=False,
                              env={**FAST, "HISTORY_MAX_BYTES": str(cap)})
    replica = cluster.replicas[0]
    room = f"long-{secrets.token_hex(3)}"
    ana = await connect(replica.url, "ana", room=room)
    for i in range(100):  # about 210 KB of messages
        assert (await ana.send(f"{i} " + "w" * 1990))["ok"]
    got, after, answers = [], 0, 0
    while True:
        answer = await ana.sio.call("history", {"after": after}, timeout=5)
        answers += 1
        assert answer["ok"] and answer["gap"] is None
        assert len(json.dumps(answer["messages"]).encode()) <= cap + 1024
        got += answer["messages"]
        after = got[-1]["seq"]
        if not answer["truncated"]:
            break
    assert [m["seq"] for m in got] == list(range(1, 101)) and answers >= 4
    # A newcomer gets the newest that fit; a resume that does not fit gets
    # them too, with a gap saying why.
    bia = await connect(replica.url, "bia", room=room)
    assert bia.welcome["history"][-1]["seq"] == 100
    assert len(json.dumps(bia.welcome["history"]).encode()) <= cap + 1024
    caio = await connect(replica.url, "caio", auth={
        "name": "caio", "room": room, "resume": {"epoch": got[0]["epoch"], "seq": 0}})
    assert "HISTORY_MAX_BYTES" in caio.welcome["gap"]
    assert caio.welcome["history"][-1]["seq"] == 100



@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_at_the_descriptor_limit_one_line_per_interval(tmp_path, loop):
    port = free_port()
    log_path = tmp_path / "chat.log"
    code = ("import asyncio, sys\n"
            + ("import uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n"
               if loop == "uvloop" else "")
            + "from chat.__main__ import main; sys.exit(main(['--port', sys.argv[1]]))")

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    sockets: list[socket.socket] = []
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-c", code, str(port)], stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=low_limit)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        for _ in range(200):  # far beyond 64 descriptors
            s = socket.socket()
            s.setblocking(False)
            sockets.append(s)
            s.connect_ex(("127.0.0.1", port))
        time.sleep(3)
    finally:
        stop_pid(process.pid)
        process.wait(10)
        for s in sockets:
            s.close()
    text = log_path.read_text()
    lines = text.splitlines()
    print(f"\n[hostile] descriptor limit ({loop}): {len(lines)} lines, {len(text)} bytes, "
          f"{text.count('Traceback')} tracebacks; {json.dumps(lines[-1:])}")
    assert "Traceback" not in text
    assert len(lines) < 20
    if loop == "asyncio":
        assert sum("cannot accept connections" in line for line in lines) == 1
