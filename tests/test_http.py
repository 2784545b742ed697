"""The HTTP side of a replica: the page, health, readiness and metrics."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from chat.tools.cluster import stop_pid


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_status(url: str, status: int, timeout: float) -> float:
    """Poll until ``url`` answers ``status``; return how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if get(url)[0] == status:
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(f"{url} did not answer {status} within {timeout} s")


async def test_python_m_chat_is_a_working_chat_without_redis(single_node, connect):
    status, body = get(single_node + "/")
    assert status == 200 and "<html" in body.lower()
    assert get(single_node + "/healthz")[1].count('"mode": "memory"') == 1
    assert get(single_node + "/readyz")[0] == 200
    ana = await connect(single_node, "ana")
    bia = await connect(single_node, "bia", transports=("polling",))
    assert (await ana.send("one node is enough"))["ok"]
    await bia.wait_for(lambda: bia.texts() == ["one node is enough"])


def test_files_outside_web_are_not_served(single_node):
    for path in ("/../setup.cfg", "/%2e%2e/setup.cfg", "/..%2fsetup.cfg", "/chat/app.py"):
        assert get(single_node + path)[0] == 404


async def test_health_and_metrics(shared_clusters, connect):
    replica = shared_clusters(replicas=1, mode="pubsub", proxy=False).replicas[0]
    ana = await connect(replica.url, "ana")
    assert (await ana.send("count me"))["ok"]
    assert not (await ana.send(""))["ok"]
    await ana.wait_for(lambda: ana.texts() == ["count me"])

    health = json.loads(get(replica.url + "/healthz")[1])
    assert health == {"status": "ok", "server": "replica-1", "mode": "pubsub",
                      "clients": 1, "backplane": "ok", "auth": "open"}
    status, body = get(replica.url + "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True

    status, metrics = get(replica.url + "/metrics")
    assert status == 200
    labels = '{mode="pubsub",server="replica-1"}'
    for line in (f"chat_connected_clients{labels} 1.0",
                 f"chat_messages_accepted_total{labels} 1.0",
                 f"chat_messages_rejected_total{labels} 1.0",
                 f"chat_messages_delivered_total{labels} 1.0",
                 f"chat_backplane_publishes_total{labels}",
                 f"chat_backplane_received_total{labels}",
                 f"chat_backplane_publish_failures_total{labels} 0.0",
                 f"chat_backplane_reconnects_total{labels} 0.0",
                 f"chat_message_handling_seconds_count{labels} 2.0"):
        assert line in metrics, line


@pytest.mark.slow
def test_readyz_follows_redis(cluster_factory, mode):
    cluster = cluster_factory(replicas=1, mode=mode, proxy=False)
    ready = cluster.replicas[0].url + "/readyz"
    wait_status(ready, 200, 10)
    cluster.stop_redis()
    wait_status(ready, 503, 5)
    assert get(cluster.replicas[0].url + "/healthz")[0] == 200  # alive, not ready
    cluster.start_redis()
    wait_status(ready, 200, 15)


def test_log_format_json_writes_one_object_per_line(cluster_factory, tmp_path):
    """LOG_FORMAT=json: every line a replica writes, gunicorn's own included,
    is one JSON object naming the replica; the start-up line says open mode."""
    cluster = cluster_factory(replicas=1, mode="pubsub", proxy=False,
                              env={"LOG_FORMAT": "json"})
    replica = cluster.replicas[0]
    assert get(replica.url + "/healthz")[0] == 200
    stop_pid(replica.pid)
    lines = (cluster.logs / "replica-1.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) >= 4 and {r["server"] for r in records} == {"replica-1"}
    assert all(set(r) >= {"ts", "level", "logger", "message"} for r in records)
    messages = [r["message"] for r in records]
    assert any(m.startswith("Starting gunicorn") for m in messages)
    assert any("identities: open (no AUTH_JWT_SECRET" in m for m in messages), messages
    assert any(m == "replica replica-1 stopped" for m in messages)
