"""The cluster through NGINX only: stickiness, spreading, scaling, down.

Everything here runs the local-process topology through ``chat.tools.cluster``,
the code behind ``make up`` when there is no Docker engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import socketio

from chat.tools.cluster import ROOT, LocalCluster, Replica, alive, default_mode, free_port
from chat.tools.nginx import NGINX_TEMPLATE

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_clients_spread_over_replicas_and_chat_crosses_them(cluster_factory, mode,
                                                                  connect):
    cluster = cluster_factory(replicas=3, mode=mode)
    clients = await asyncio.gather(*(connect(cluster.url, f"user{i}") for i in range(30)))
    spread = Counter(c.server for c in clients)
    assert set(spread) == {"replica-1", "replica-2", "replica-3"}, spread

    ack = await clients[0].send("through nginx")
    assert ack["ok"]
    for client in clients:
        await client.wait_for(lambda client=client: "through nginx" in client.texts())


async def test_long_polling_client_stays_on_one_replica(shared_clusters, connect):
    cluster = shared_clusters(replicas=3, mode="pubsub")
    poller = await connect(cluster.url, "poller", transports=("polling",))
    others = await asyncio.gather(*(connect(cluster.url, f"ws{i}") for i in range(6)))
    for i in range(5):
        assert (await poller.send(f"poll {i}"))["ok"]
        assert (await others[i].send(f"ws {i}"))["ok"]
    expected = [t for i in range(5) for t in (f"poll {i}", f"ws {i}")]
    await poller.wait_for(lambda: poller.texts() == expected)
    assert poller.disconnects == []


async def test_scale_up_and_down_keeps_survivors_connected(cluster_factory, connect):
    cluster = cluster_factory(replicas=3, mode="socketio")
    first = await asyncio.gather(*(connect(cluster.url, f"first{i}") for i in range(24)))
    survivor = next(c for c in first if c.server == "replica-1")

    await asyncio.to_thread(cluster.scale, 5)  # the clients stay responsive meanwhile
    assert [r.server_id for r in cluster.replicas] == [f"replica-{i}" for i in range(1, 6)]
    later = await asyncio.gather(*(connect(cluster.url, f"later{i}") for i in range(40)))
    assert {"replica-4", "replica-5"} <= {c.server for c in later}
    assert (await later[0].send("after scale up"))["ok"]
    await survivor.wait_for(lambda: "after scale up" in survivor.texts())

    leaving = [r.pid for r in cluster.replicas[2:]]
    await asyncio.to_thread(cluster.scale, 2)
    assert not any(alive(pid) for pid in leaving)
    newest = await asyncio.gather(*(connect(cluster.url, f"newest{i}") for i in range(12)))
    assert {c.server for c in newest} <= {"replica-1", "replica-2"}
    assert (await newest[0].send("after scale down"))["ok"]
    await survivor.wait_for(lambda: "after scale down" in survivor.texts())
    assert survivor.disconnects == []


def test_cli_up_ps_scale_down_leaves_nothing_behind(tmp_path):
    state = tmp_path / "run"
    port = free_port()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "chat.tools.cluster", "--state-dir",
                               str(state), *args],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)

    try:
        up = cli("up", "--replicas", "3", "--port", str(port))
        assert up.returncode == 0, up.stderr
        assert f"http://localhost:{port}/" in up.stdout
        assert up.stdout.count(" ready") == 3
        cluster = LocalCluster(state)
        pids = [r.pid for r in cluster.replicas] + [cluster.nginx_pid, cluster.redis.pid]
        ports = [r.port for r in cluster.replicas] + [port, cluster.redis.port]
        assert all(alive(pid) for pid in pids) and all(listening(p) for p in ports)

        again = cli("up", "--port", str(free_port()))
        assert again.returncode == 1 and "already running" in again.stderr
        assert "make down" in again.stderr
        # Another program on the port (here: this cluster's NGINX, seen from
        # a second state folder) is named, and nothing is started.
        other = subprocess.run([sys.executable, "-m", "chat.tools.cluster", "--state-dir",
                                str(tmp_path / "other"), "up", "--port", str(port)],
                               capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert other.returncode == 1
        assert other.stderr.strip() == (f"chat-cluster: port {port} is taken by another "
                                        "program (stop it, or choose another: make up PORT=...)")
        assert not (tmp_path / "other" / "cluster.json").exists()

        # A replica that died is started again by scale, even to the same size.
        cluster.kill_replica("replica-2")
        revived = cli("scale", "3")
        assert revived.returncode == 0, revived.stderr
        assert "restarted replica-2 (had stopped)" in revived.stdout
        assert revived.stdout.count(" ready") == 3
        pids.append(LocalCluster(state).replica("replica-2").pid)

        scaled = cli("scale", "4")
        assert scaled.returncode == 0 and "replica-4" in scaled.stdout
        pids.append(LocalCluster(state).replica("replica-4").pid)
        ports.append(LocalCluster(state).replica("replica-4").port)

        one = cli("logs", "replica-4")
        assert one.returncode == 0 and "replica replica-4 up" in one.stdout
        assert "replica-1" not in one.stdout
        unknown = cli("logs", "replica-9")
        assert unknown.returncode == 1 and "no log for replica-9" in unknown.stdout

        down = cli("down")
        assert down.returncode == 0
        assert not [pid for pid in pids if alive(pid)]
        assert not [p for p in ports if listening(p)]
        assert "no cluster is running" in cli("ps").stdout
        assert not state.exists()  # nothing left behind: logs, pids, nginx.conf
    finally:
        LocalCluster(state).down()


def test_missing_nginx_is_one_clear_line(tmp_path, monkeypatch, capsys):
    import chat.tools.cluster
    import chat.tools.processes

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(chat.tools.processes, "SBIN_DIRS", ())
    assert chat.tools.cluster.main(["--state-dir", str(tmp_path / "run"), "up"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "chat-cluster: nginx not found: install NGINX (Debian/Ubuntu: apt-get install nginx; "
        "macOS: brew install nginx)"]


# -- static checks of what cannot run here -----------------------------------

def test_rendered_nginx_conf_passes_nginx_t(tmp_path):
    cluster = LocalCluster(tmp_path / "run")  # nothing is started: render and check
    cluster.port = free_port()
    cluster.replicas = [Replica(f"replica-{i}", free_port()) for i in (1, 2, 3)]
    cluster.check_nginx()  # raises ClusterError with nginx's words on failure
    conf = (tmp_path / "run" / "nginx" / "nginx.conf").read_text()
    assert not re.search(r"\$\{CHAT_[A-Z_]+\}", conf)
    assert len(re.findall(r"server 127.0.0.1:\d+ max_fails=1 fail_timeout=5s;", conf)) == 3
    assert "hash $chat_sticky_key consistent" in conf


def test_compose_file_follows_the_compose_specification():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                             "vendor.compose-spec", str(ROOT / "compose.yaml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_sets_every_nginx_placeholder():
    placeholders = set(re.findall(r"\$\{(CHAT_[A-Z_]+)\}", NGINX_TEMPLATE.read_text()))
    dockerfile = (ROOT / "Dockerfile").read_text()
    web_stage = dockerfile.split("AS web", 1)[1].split("FROM ", 1)[0]
    assert placeholders == set(re.findall(r"\b(CHAT_[A-Z_]+)=", web_stage))


def test_compose_keeps_redis_private_and_scales_the_server():
    from ruamel.yaml import YAML  # comes with check-jsonschema

    compose = YAML(typ="safe").load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert services["server"]["environment"]["REDIS_MODE"] == "${REDIS_MODE:-socketio}"
    assert services["server"]["depends_on"]["redis"]["condition"] == "service_healthy"
    # Every Redis topology is a profile (make up REDIS=...), private, and
    # the server waits for whichever one runs.
    profiles = {}
    for name, service in services.items():
        for profile in service.get("profiles", ()):
            profiles.setdefault(profile, []).append(name)
            if profile != "monitoring":  # Prometheus and Grafana are for people to open
                assert "ports" not in service, name
    assert sorted(profiles) == ["cluster", "monitoring", "sentinel", "single"]
    assert len([n for n in profiles["cluster"] if n.startswith("redis-node")]) == 6
    assert len([n for n in profiles["sentinel"] if n.startswith("sentinel")]) == 3
    assert "--appendonly" in services["redis"]["command"] and services["redis"]["volumes"]
    waits_for = services["server"]["depends_on"]
    assert {"redis", "sentinel-1", "cluster-init"} <= set(waits_for)
    assert services["nginx"]["depends_on"]["server"]["condition"] == "service_healthy"
    assert services["nginx"]["ports"] == ["${CHAT_PORT:-8080}:8080"]


def test_a_redis_cluster_gets_the_pubsub_mode_unless_told_otherwise():
    """socketio mode cannot run on a Cluster: make up REDIS=cluster (compose
    or local processes) and chat-cluster pick pubsub there; an explicit
    socketio is passed on, for the replicas to refuse in one line."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODE", "REDIS", "REDIS_URL")}

    def planned(*args: str) -> str:
        return subprocess.run(["make", "-n", "up", *args], cwd=ROOT, env=env, check=True,
                              capture_output=True, text=True, timeout=60).stdout

    for docker, shown in (("no", "--mode {} "), ("yes", "REDIS_MODE={} ")):
        assert shown.format("socketio") in planned(f"DOCKER={docker}")
        assert shown.format("socketio") in planned(f"DOCKER={docker}", "REDIS=sentinel")
        assert shown.format("pubsub") in planned(f"DOCKER={docker}", "REDIS=cluster")
        assert shown.format("pubsub") in planned(f"DOCKER={docker}",
                                                 "REDIS_URL=rediss+cluster://h:1")
        assert shown.format("socketio") in planned(f"DOCKER={docker}", "REDIS=cluster",
                                                   "MODE=socketio")
    assert [default_mode(redis, url) for redis, url in (
        ("single", ""), ("sentinel", ""), ("cluster", ""), ("single", "redis+cluster://h:1"),
        ("cluster", "redis://h:1"))] == ["socketio", "socketio", "pubsub", "pubsub", "socketio"]


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:+replacement}``."""
    def one(match: re.Match) -> str:
        name, operator, word = match.groups()
        found = env.get(name, "")
        if operator == ":-":
            return found or word
        return (word if found else "") if operator == ":+" else found
    return re.sub(r"\$\{(\w+)(?:(:[-+])([^}]*))?\}", one, value)


@pytest.mark.parametrize("host_file", ["", "/srv/keys/jwt-public.pem"])
def test_compose_hands_the_public_key_file_to_the_replicas_read_only(host_file):
    from ruamel.yaml import YAML

    from chat.settings import load_settings

    server = YAML(typ="safe").load((ROOT / "compose.yaml").read_text())["services"]["server"]
    env = {"AUTH_JWT_PUBLIC_KEY": host_file}
    setting = interpolate(server["environment"]["AUTH_JWT_PUBLIC_KEY"], env)
    mounts = {target: (source, mode) for source, target, mode in
              (interpolate(v, env).split(":") for v in server["volumes"])}
    if host_file:
        assert setting.startswith("/") and mounts[setting] == (host_file, "ro")
    else:  # no key: open mode, and the mount's source is there
        assert setting == "" and load_settings({"AUTH_JWT_PUBLIC_KEY": setting}).open_mode
        assert all(Path(source).exists() for source, _ in mounts.values())


def test_compose_lets_a_replica_finish_its_drain():
    """Compose SIGKILLs a container after ``stop_grace_period``: it must
    outlast gunicorn's own bound on the worker's stop."""
    import runpy

    from ruamel.yaml import YAML

    server = YAML(typ="safe").load((ROOT / "compose.yaml").read_text())["services"]["server"]
    graceful = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))["graceful_timeout"]
    assert float(server["stop_grace_period"].rstrip("s")) > graceful


async def test_clients_without_a_sticky_key_are_spread_and_polling_stays_put(shared_clusters):
    """The official client as a Node app sends no ``sticky`` key: its
    WebSocket-only connections are spread anyway, and a long-polling
    session without a key stays on one replica (its address's)."""
    cluster = shared_clusters(replicas=3, mode="pubsub")
    servers: list[str] = []

    async def one(name: str, transports: list[str]) -> socketio.AsyncClient:
        client = socketio.AsyncClient(reconnection=False)
        welcomed = asyncio.get_running_loop().create_future()
        client.on("welcome", lambda data: welcomed.done() or welcomed.set_result(data))
        await client.connect(cluster.url, auth={"name": name}, transports=transports,
                             wait_timeout=10)
        servers.append((await asyncio.wait_for(welcomed, 10))["server"])
        return client

    plain = [await one(f"plain{i}", ["websocket"]) for i in range(30)]
    spread = Counter(servers)
    # 30 keys hashed at random onto 3 replicas leave none empty unless the
    # hash ignores them (before: all 30 on one replica).
    assert len(spread) == 3, spread
    servers.clear()
    poller = await one("poller", ["polling"])
    answers = [await poller.call("presence", {}, timeout=5) for _ in range(20)]
    assert all(a["ok"] for a in answers)
    assert poller.connected and poller.transport() == "polling"
    for client in [*plain, poller]:
        await client.disconnect()


async def test_replicas_page_shows_every_replica_through_nginx(cluster_factory, connect):
    cluster = cluster_factory(replicas=3, mode="pubsub", env={"PRESENCE_TTL": "3"})
    await connect(cluster.replicas[1].url, "counted")

    def replicas() -> list[dict]:
        with urllib.request.urlopen(f"{cluster.url}/replicas", timeout=5) as response:
            return json.load(response)["replicas"]

    await asyncio.sleep(1.5)  # every replica has written its entry since the connect
    listed = await asyncio.to_thread(replicas)
    assert [r["server"] for r in listed] == ["replica-1", "replica-2", "replica-3"]
    assert all(r["ready"] and not r["stale"] and r["mode"] == "pubsub" for r in listed)
    assert [r["clients"] for r in listed] == [0, 1, 0]

    cluster.kill_replica("replica-3")
    await asyncio.sleep(4.5)  # more than PRESENCE_TTL without its refresh
    listed = await asyncio.to_thread(replicas)
    assert {r["server"]: r["stale"] for r in listed} == {
        "replica-1": False, "replica-2": False, "replica-3": True}
