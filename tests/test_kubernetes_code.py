"""deploy/kubernetes held to the code it runs, offline.

What the manifests claim about the chat is checked against the chat itself,
not against a second copy of the figures:

* the probe paths, the ServiceMonitor's path and every path the Ingress routes
  answer on a real app (``create_app``, in memory, through aiohttp's test
  server), and the page's own assets are all routed; the probe port is the
  one the image's gunicorn binds (the Dockerfile's CMD);
* every environment variable is one ``load_settings`` reads (recorded while
  it reads), and its value parses, alone and with the overlay's others;
* gunicorn's ``graceful_timeout`` (deploy/gunicorn.conf.py), after which its
  master kills the worker whatever it is doing, covers the longest the app's
  stop can take (the bounds chat.app puts on its steps, recorded on a real
  app, summed); the grace period covers the preStop sleep plus that;
* the Ingress hashes on the variable deploy/nginx.conf hashes on, made by the
  same map, from the query parameter the page's JS sends;
* the Ingress's timeouts outlast PING_INTERVAL + PING_TIMEOUT as the overlay
  sets them; the autoscaling metric is the gauge the replicas export.
"""

from __future__ import annotations

import asyncio
import json
import re
import runpy

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from kube import (
    KUBE,
    OVERLAYS,
    ROOT,
    chat_container,
    environment,
    one,
    overlay,
    pod_spec,
    variables,
)

import chat.app
from chat.app import STOP_STEP, create_app
from chat.metrics import Metrics
from chat.redis_url import parse_redis_url
from chat.settings import Settings, load_settings

NGINX_CONF = (ROOT / "deploy" / "nginx.conf").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
# After the last worker is gone the gunicorn master reaps it (it polls every
# 0.1 s) and exits: a second is ample.
ARBITER_SLACK = 1.0
# Between the drain and the stop's steps, aiohttp waits for the requests still
# running.  The Socket.IO ones end with their connections (the drain closes
# them); an API call's Redis commands each give up within a second or two
# (POOL_WAIT, the socket timeout).  A request hanging longer takes its time
# from the steps' (aiohttp would wait up to 95 % of graceful_timeout).
IN_FLIGHT = 2.0
# What a prefix the Ingress routes is asked for with (the others: a file of the page).
ASKED = {"/socket.io": "/socket.io/?EIO=4&transport=polling", "/api": "/api/rooms"}
API_KEY = "kubernetes-test-api-key"


def gunicorn_command() -> list[str]:
    """The server image's CMD (the Dockerfile's last stage).  Its exec form
    (JSON) is required: gunicorn is then PID 1 and gets the kubelet's SIGTERM
    itself, not a shell that would not pass it on."""
    server = DOCKERFILE.split("AS server", 1)[1]
    return json.loads(re.search(r"^CMD (\[.*\])$", server, re.M).group(1))


def served_paths(objects: list[dict]) -> list[tuple[str, str]]:
    rules = one(objects, "Ingress", "chat")["spec"]["rules"]
    return [(p["pathType"], p["path"]) for rule in rules for p in rule["http"]["paths"]]


def routed(path: str, ingress: list[tuple[str, str]]) -> bool:
    return any(path == p if kind == "Exact" else path == p or path.startswith(p.rstrip("/") + "/")
               for kind, p in ingress)


def proxied_locations(conf: str) -> list[tuple[bool, str]]:
    """``(exact, path)`` for every location of nginx.conf that proxies to
    the replicas (its body has ``proxy_pass http://chat_replicas``)."""
    found = re.findall(r"^\s*location\s+(?:(=|\^~)\s+)?([^\s{]+)\s*\{([^{}]*)\}", conf, re.M)
    return [(modifier == "=", path) for modifier, path, body in found
            if re.search(r"^\s*proxy_pass http://chat_replicas;", body, re.M)]


def covers(prefix: str, ingress: list[tuple[str, str]]) -> bool:
    """An Ingress path of type Prefix routes every path under ``prefix``."""
    base = prefix.rstrip("/")
    return any(kind == "Prefix" and (base == p.rstrip("/") or base.startswith(p.rstrip("/") + "/"))
               for kind, p in ingress)


def probes(container: dict) -> dict[str, dict]:
    return {kind: container[kind]["httpGet"]
            for kind in ("readinessProbe", "livenessProbe", "startupProbe") if kind in container}


@pytest.mark.parametrize("name", OVERLAYS)
async def test_probe_metrics_and_ingress_paths_answer_on_the_app(name):
    objects = overlay(name)
    ingress = served_paths(objects)
    page = (ROOT / "web" / "index.html").read_text()
    assets = ["/", *(f"/{ref}" for ref in re.findall(r'(?:src|href)="([^":]+)"', page))]
    unrouted = [a for a in assets if not routed(a, ingress)]
    assert not unrouted, f"the page's files the Ingress does not route: {unrouted}"
    inside = [p["path"] for p in probes(chat_container(objects)).values()]
    inside += [e["path"] for e in one(objects, "ServiceMonitor")["spec"]["endpoints"]]
    assert not [p for p in inside if routed(p, ingress)], "health and metrics stay inside"
    # A path the Ingress routes by prefix is asked for with what the page
    # (or, for the API, a backend) asks.
    wanted = {p: ASKED.get(p) or next(a for a in assets if a.startswith(p + "/"))
              if kind == "Prefix" else p for kind, p in ingress}
    app = create_app(Settings(server_id="kubernetes-test", api_keys=(API_KEY,)))
    async with TestClient(TestServer(app)) as client:
        for path in [*inside, *wanted.values()]:
            response = await client.get(path, headers={"Authorization": f"Bearer {API_KEY}"})
            assert response.status == 200, f"{name}: GET {path} answers {response.status}"
        metrics = await (await client.get("/metrics")).text()
        assert "chat_connected_clients" in metrics


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_ingress_routes_every_location_nginx_conf_proxies_to_the_replicas(name):
    """A location added to deploy/nginx.conf is a path the chat serves
    through the proxy: the Ingress must route it too."""
    proxied = proxied_locations(NGINX_CONF)
    assert (True, "/replicas") in proxied and (False, "/socket.io/") in proxied, proxied
    ingress = served_paths(overlay(name))
    missing = [("= " if exact else "") + path for exact, path in proxied
               if not (routed(path, ingress) if exact else covers(path, ingress))]
    assert not missing, f"{name}: nginx.conf proxies what the Ingress does not route: {missing}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_probes_use_the_port_gunicorn_binds_with_the_projects_configuration(name):
    objects = overlay(name)
    container = chat_container(objects)
    assert "command" not in container and "args" not in container, "the image's CMD runs"
    command = gunicorn_command()
    assert command[command.index("-c") + 1] == "deploy/gunicorn.conf.py"
    port = int(command[command.index("--bind") + 1].rsplit(":", 1)[1])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named["http"] == port
    for kind, probe in probes(container).items():
        assert named.get(probe["port"], probe["port"]) == port, kind
    service_port = one(objects, "Service", "chat")["spec"]["ports"][0]["targetPort"]
    assert named.get(service_port, service_port) == port


class Recorder(dict):
    """An environment that remembers every variable asked for."""

    def __init__(self, *args):
        super().__init__(*args)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)


def settings_read() -> set[str]:
    env = Recorder()
    load_settings(env)
    return env.asked


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_environment_variable_is_a_setting_and_parses(name):
    """Every variable, those of the Secrets the operator creates included
    (checked by name: their values are the operator's)."""
    env = environment(overlay(name))
    unknown = variables(overlay(name)) - settings_read()
    assert not unknown, f"{name}: variables load_settings does not read: {sorted(unknown)}"
    parse_redis_url(env["REDIS_URL"])  # its form, whatever the mode
    for variable, value in env.items():
        if variable != "REDIS_URL":  # alone it would meet the default mode
            load_settings({variable: value})
    assert load_settings(env).redis_url == env["REDIS_URL"]


async def stop_bounds(monkeypatch) -> list[float]:
    """The bound of each step of a replica's stop, as the code sets them:
    a real app started and stopped, with every ``asyncio.timeout`` chat.app
    asks for recorded.  The steps run one after the other, so the longest
    the stop can take is their sum (each step hanging to its bound)."""
    bounds: list[float] = []

    class Recording:
        def __getattr__(self, name):
            return getattr(asyncio, name)

        @staticmethod
        def timeout(delay):
            bounds.append(delay)
            return asyncio.timeout(delay)

    monkeypatch.setattr(chat.app, "asyncio", Recording())
    async with TestClient(TestServer(create_app(Settings(server_id="grace-test")))):
        pass
    return bounds


@pytest.mark.parametrize("name", OVERLAYS)
async def test_the_grace_period_covers_the_drain(name, monkeypatch):
    bounds = await stop_bounds(monkeypatch)
    assert len(bounds) > 1 and set(bounds) == {STOP_STEP}, bounds
    graceful = runpy.run_path(str(GUNICORN_CONF))["graceful_timeout"]
    stop = sum(bounds) + IN_FLIGHT
    assert graceful >= stop, (
        f"gunicorn's graceful_timeout ({graceful} s) would kill a worker still stopping: "
        f"{len(bounds)} steps of up to {STOP_STEP:g} s + {IN_FLIGHT:g} s for requests in flight")
    spec = pod_spec(overlay(name))
    pre_stop = chat_container(overlay(name))["lifecycle"]["preStop"]
    sleep = pre_stop["sleep"]["seconds"]
    assert sleep >= 1, "the ingress must hear the replica is leaving before it stops"
    drain = sleep + graceful + ARBITER_SLACK
    assert spec["terminationGracePeriodSeconds"] >= drain, (
        f"preStop {sleep} s + gunicorn's graceful_timeout {graceful} s + {ARBITER_SLACK} s")


def sticky_map(conf: str) -> tuple[str, str, list[str]]:
    """nginx.conf's map making the hash key: (source, variable, its lines)."""
    found = re.search(r'map "([^"]+)" (\$\w+) \{\n(.*?)\n\s*\}', conf, re.S)
    assert found, "no sticky key map"
    return found.group(1), found.group(2), [" ".join(line.split())
                                             for line in found.group(3).splitlines()]


def test_the_ingress_hashes_on_nginx_confs_key_from_the_pages_query_parameter():
    ingress = one(overlay(OVERLAYS[0]), "Ingress", "chat")
    key = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"]
    assert re.search(r"^\s*hash (\$\w+) consistent;", NGINX_CONF, re.M).group(1) == key
    snippet = yaml.safe_load((KUBE / "ingress-nginx" / "sticky-key.yaml").read_text())
    source, variable, lines = sticky_map(snippet["data"]["http-snippet"])
    assert (source, variable, lines) == sticky_map(NGINX_CONF)
    assert variable == key
    script = (ROOT / "web" / "app.js").read_text()
    sent = re.search(r"query:\s*\{\s*(\w+):", script).group(1)
    assert source.split(":")[0] == f"$arg_{sent}", (source, sent)


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_ingress_outlasts_a_heartbeat(name):
    objects = overlay(name)
    env = environment(objects)
    settings = load_settings({k: env[k] for k in ("PING_INTERVAL", "PING_TIMEOUT") if k in env})
    heartbeat = settings.ping_interval + settings.ping_timeout
    annotations = one(objects, "Ingress", "chat")["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) > heartbeat, timeout


def test_autoscaling_on_clients_reads_the_gauge_the_replicas_export():
    component = yaml.safe_load(
        (KUBE / "components" / "autoscale-on-clients" / "kustomization.yaml").read_text())
    metric = yaml.safe_load(component["patches"][0]["patch"])[0]["value"]["pods"]["metric"]
    adapter = yaml.safe_load((KUBE / "prometheus-adapter" / "values.yaml").read_text())
    rule = adapter["rules"]["custom"][0]
    assert rule["name"]["as"] == metric["name"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    exported = {m.name for m in Metrics("test", "memory").registry.collect()}
    assert series in exported and metric["name"] in exported
