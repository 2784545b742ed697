"""Prometheus and Grafana, the optional compose profile "monitoring",
checked offline (no Docker engine here): the compose services and their
mounts, the scrape configuration, and a dashboard whose every query names a
metric a replica really exposes (rendered by chat/metrics.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ruamel.yaml import YAML  # comes with check-jsonschema

from chat.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "chat.json"
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "le", "server",
                "job", "instance", "m"}


def load(path: Path):
    return YAML(typ="safe").load(path.read_text())


def test_monitoring_is_an_optional_profile_with_files_that_exist():
    services = load(ROOT / "compose.yaml")["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    # The chat itself runs whatever the profiles (Redis is one of the
    # topology profiles: test_cluster.py).
    assert all("profiles" not in services[s] for s in ("server", "nginx"))
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":", 1)[0]
            assert (ROOT / source).exists(), volume
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/var/lib/grafana/dashboards/" + DASHBOARD.name


def test_prometheus_scrapes_every_replica():
    config = load(ROOT / "deploy" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "chat"
    assert job["dns_sd_configs"] == [{"names": ["server"], "type": "A", "port": 8000,
                                      "refresh_interval": "10s"}]
    assert '"--bind", "0.0.0.0:8000"' in (ROOT / "Dockerfile").read_text()


def test_grafana_provisions_the_dashboard_from_the_mounted_folder():
    provider = load(ROOT / "deploy/grafana/provisioning/dashboards/chat.yml")
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = load(ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml")
    assert source["datasources"][0]["uid"] == "prometheus"


def test_every_dashboard_query_names_an_exposed_metric():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 5
    exposed = set(re.findall(r"^(chat_\w+?)(?:\{| )", Metrics("r", "pubsub").render().decode(),
                             re.M))
    for panel in panels:
        assert panel["datasource"]["uid"] == "prometheus"
        for target in panel["targets"]:
            names = set(re.findall(r"\b([a-z_]+)\b(?![\"'])", target["expr"]))
            names -= PROMQL_WORDS
            unknown = {n for n in names if n != "up" and n not in exposed
                       and n.removesuffix("_bucket") + "_bucket" not in exposed}
            assert not unknown, (panel["title"], target["expr"], unknown)


def test_every_monitoring_command_starts_a_redis_too():
    """The profile adds Prometheus and Grafana only; the chat's Redis is a
    profile of its own, so a command naming only ``--profile monitoring``
    would start replicas that have no Redis to reach."""
    services = load(ROOT / "compose.yaml")["services"]
    redis_profiles = {p for s in services.values() for p in s.get("profiles", ())} - {
        "monitoring"}
    found = []
    for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "compose.yaml"):
        for command in re.findall(r"docker compose[^`\n]*--profile monitoring[^`\n]*",
                                  doc.read_text()):
            found.append(command)
            named = set(re.findall(r"--profile (\S+)", command))
            assert named & redis_profiles, f"{doc.name}: {command!r} starts no Redis"
    assert len(found) >= 2, found  # the README's and compose.yaml's own
