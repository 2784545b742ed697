"""Fuzzing a live replica: random event names and payloads, over a real
connection.  Whatever arrives, the client gets an answer, stays connected,
and the replica's log shows no traceback and no error."""

from __future__ import annotations

import asyncio
import threading

import pytest
import socketio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

# Valid JSON only: NaN and Infinity (which Python's json writes) are refused
# with the connection, like any undecodable packet (chat/jsonio.py;
# tests/test_hostile_transport.py).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
event_names = st.sampled_from(
    ["message", "join", "typing", "connect", "disconnect", "welcome", "system", "",
     "__init__", "on_message", "trigger_event"]) | st.text(max_size=30)
payloads = json_values | st.fixed_dictionaries({"text": json_values}) | st.fixed_dictionaries(
    {"room": json_values})


class LoopThread:
    """One event loop in a thread, so hypothesis's synchronous examples can
    share a single live connection."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=15):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def live(cluster_factory):
    cluster = cluster_factory(replicas=2, mode="pubsub", proxy=False,
                              env={"MESSAGE_RATE": "1000", "MESSAGE_BURST": "1000"})
    runner = LoopThread()
    client = socketio.AsyncClient(reconnection=False)
    runner.run(client.connect(cluster.replicas[0].url, auth={"name": "fuzzer"},
                              transports=["websocket"]))
    yield cluster, runner, client
    runner.run(client.disconnect())
    runner.close()


def test_random_events_always_get_an_answer(live):
    cluster, runner, client = live

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(event=event_names, payload=payloads)
    def one(event, payload):
        answer = runner.run(client.call(event, payload, timeout=5))
        assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool), answer
        assert client.connected

    one()
    for replica in cluster.replicas:
        log = (cluster.logs / f"{replica.server_id}.log").read_text()
        assert "Traceback" not in log
        assert " ERROR " not in log
