"""docs/deploy.md held to deploy/kubernetes, offline.

test_docs.py leaves the kubectl and helm lines of the docs to this file:
the manifests they name render, the overlay the docs tell a reader to write
renders as written, the Secret they create is the one the Deployment reads,
and the Redis, Prometheus and prometheus-adapter they install are where and
as the overlays and values expect them.  That Bitnami's charts name their
pods and labels as ``BITNAMI`` says is read from the charts' templates, not
checked here (no helm, no network).
"""

from __future__ import annotations

import os
import re
import shlex
import textwrap

import yaml
from kube import (
    KUBE,
    ROOT,
    chat_container,
    environment,
    kustomize,
    namespaces,
    one,
    pod_spec,
    secret_refs,
)
from kube import overlay as rendered
from test_docs import shell_lines

from chat.redis_url import parse_redis_url

DEPLOY_DOC = ROOT / "docs" / "deploy.md"
LINES = [line for where, line in shell_lines() if where.startswith("deploy.md")]
# Overlay: Bitnami's chart, node N's host for release R, the --set values the
# chat needs (a password on Redis, none on the sentinels since the chat asks
# them without one, the chart's NetworkPolicy off since it admits every pod),
# and the value that sets the password.
BITNAMI = {
    "sentinel": ("redis", "{r}-node-{n}.{r}-headless", {
        "architecture": "replication", "sentinel.enabled": "true", "auth.sentinel": "false",
        "networkPolicy.enabled": "false"}, "auth.password"),
    "cluster": ("redis-cluster", "{r}-{n}.{r}-headless", {"networkPolicy.enabled": "false"},
                "password"),
}


def kubectl_lines(phrase: str) -> list[list[str]]:
    """The docs' kubectl lines holding ``phrase``, split."""
    return [shlex.split(line) for line in LINES
            if line.split()[0] == "kubectl" and phrase in line]


def helm_installs() -> dict[str, dict]:
    """The docs' ``helm install`` lines, by chart: release, namespace, --set
    values, values files; and every chart repository they use is added."""
    found, repositories = {}, set()
    for argv in (shlex.split(line) for line in LINES if line.split()[0] == "helm"):
        if argv[1:3] == ["repo", "add"]:
            repositories.add(argv[3])
            continue
        assert argv[1] == "install", argv
        release, chart, options = argv[2], argv[3], argv[4:]
        assert chart.startswith("oci://") or chart.split("/")[0] in repositories, argv
        values = [options[i + 1] for i, a in enumerate(options) if a in ("-f", "--values")]
        found[chart.rsplit("/", 1)[1]] = {
            "release": release, "namespace": options[options.index("--namespace") + 1],
            "set": dict(options[i + 1].split("=", 1) for i, a in enumerate(options)
                        if a == "--set"),
            "values": [yaml.safe_load((ROOT / v).read_text()) for v in values]}
    return found


def test_the_kubectl_lines_of_the_docs_name_what_is_here():
    """test_docs.py leaves kubectl lines here: every manifest folder
    or file of the repository they name renders or parses."""
    lines = [line for line in LINES if line.split()[0] == "kubectl"]
    named = []
    for line in lines:
        argv = shlex.split(line)
        for flag in ("-k", "kustomize", "-f", "--patch-file"):
            if flag in argv and argv[argv.index(flag) + 1].startswith("deploy/"):
                named.append((flag, ROOT / argv[argv.index(flag) + 1]))
    assert {flag for flag, _ in named} >= {"-k", "kustomize", "--patch-file"}, lines
    for flag, path in named:
        if flag in ("-k", "kustomize"):
            kustomize(path)
        else:
            assert yaml.safe_load(path.read_text()), path


def test_the_docs_own_overlay_renders_with_its_image_and_host(tmp_path):
    """The overlay docs/deploy.md tells a reader to write, as written (its
    path to this repository aside)."""
    text = DEPLOY_DOC.read_text()
    block = re.search(r"```yaml\n# my-chat/kustomization.yaml\n(.*?)```", text, re.S)
    mine = yaml.safe_load(textwrap.dedent(block.group(1)))
    (tmp_path / "my-chat").mkdir()
    here = os.path.relpath(ROOT, tmp_path / "my-chat")
    mine["resources"] = [r.replace("../chat", here) for r in mine["resources"]]
    (tmp_path / "my-chat" / "kustomization.yaml").write_text(yaml.safe_dump(mine))
    objects = kustomize(tmp_path / "my-chat")
    image = one(objects, "Deployment", "chat")["spec"]["template"]["spec"]["containers"][0]
    assert image["image"] == "registry.example.com/chat-server:1.0"
    assert one(objects, "Ingress")["spec"]["rules"][0]["host"] == "chat.yourcompany.com"
    # kube-prometheus-stack's Prometheus takes the ServiceMonitors labelled with its release.
    release = helm_installs()["kube-prometheus-stack"]["release"]
    assert one(objects, "ServiceMonitor")["metadata"]["labels"]["release"] == release


def test_the_docs_create_the_secret_the_deployment_reads():
    """Each key the docs put in chat-secrets is one the Deployment reads, as
    the variable of that name or the PEM file it mounts; each key it reads
    is in the docs; and AUTH_JWT_PUBLIC_KEY names the mounted file."""
    objects = rendered("single")
    refs = {k: r for k, r in secret_refs(objects).items() if r["name"] == "chat-secrets"}
    assert refs and all(r["optional"] and r["key"] == k for k, r in refs.items()), refs
    volume = next(v for v in pod_spec(objects)["volumes"]
                  if v.get("secret", {}).get("secretName") == "chat-secrets")
    assert volume["secret"]["optional"], "the Secret is optional, its volume too"
    mount = next(m for m in chat_container(objects)["volumeMounts"] if m["name"] == volume["name"])
    files = {i["key"]: f"{mount['mountPath']}/{i['path']}" for i in volume["secret"]["items"]}
    lines = kubectl_lines("create secret generic chat-secrets")
    assert lines, "the docs create no chat-secrets"
    shown = set()
    for argv in lines:
        literals = dict(a.split("=", 2)[1:] for a in argv if a.startswith("--from-literal="))
        keys = {a.split("=", 2)[1] for a in argv if a.startswith("--from-file=")}
        assert set(literals) <= set(refs), f"keys the Deployment does not read: {argv}"
        assert keys <= set(files), f"files the Deployment does not mount: {argv}"
        if "AUTH_JWT_PUBLIC_KEY" in literals:
            assert literals["AUTH_JWT_PUBLIC_KEY"] in {files[k] for k in keys}, argv
        shown |= set(literals)
    assert shown == set(refs), f"keys the docs never set: {set(refs) - shown}"


def test_the_helm_lines_install_redis_as_the_overlays_name_it():
    installs = helm_installs()
    for name, (chart, host, wanted, password) in BITNAMI.items():
        helm, objects = installs[chart], rendered(name)
        assert namespaces(objects) == {helm["namespace"]}, name
        assert wanted.items() <= helm["set"].items(), (name, helm["set"])
        assert helm["set"].get(password) and helm["set"].get("auth.enabled") != "false", name
        selector = one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]
        assert selector == {"app.kubernetes.io/name": chart,
                            "app.kubernetes.io/instance": helm["release"]}, name
        target = parse_redis_url(
            (KUBE / "overlays" / name / "redis.env").read_text().split("REDIS_URL=")[1].strip())
        assert target.password is None, f"{name}: a password in the repository"
        hosts = [host.format(r=helm["release"], n=n) for n in range(len(target.nodes))]
        assert [h for h, _ in target.nodes] == hosts, name
        if name == "sentinel":
            assert target.service == helm["set"].get("sentinel.masterSet", "mymaster")


def test_the_docs_urls_with_a_password_reach_the_overlays_redis(tmp_path):
    """The URL the docs tell a reader to put in the overlay is the
    overlay's own, with the password given to the chart, and the docs'
    secretGenerator puts it in the replicas' environment."""
    text = DEPLOY_DOC.read_text()
    urls = re.findall(r"^REDIS_URL=(\S+)$", text, re.M)
    generator = yaml.safe_load(re.search(
        r"```yaml\n# my-chat/kustomization.yaml, added\n(.*?)```", text, re.S).group(1))
    installs = helm_installs()
    assert {parse_redis_url(u).topology for u in urls} == set(BITNAMI), urls
    for url in urls:
        mine = tmp_path / parse_redis_url(url).topology
        mine.mkdir()
        (mine / "redis.env").write_text(f"REDIS_URL={url}\n")
        where = os.path.relpath(KUBE / "overlays" / mine.name, mine)
        (mine / "kustomization.yaml").write_text(yaml.safe_dump({**generator,
                                                                 "resources": [where]}))
        assert environment(kustomize(mine))["REDIS_URL"] == url
        mine = parse_redis_url(url)
        chart, _, _, password = BITNAMI[mine.topology]
        assert mine.password == installs[chart]["set"][password], url
        theirs = parse_redis_url(
            (KUBE / "overlays" / mine.topology / "redis.env").read_text().split("REDIS_URL=")[1]
            .strip())
        assert (mine.nodes, mine.service, mine.db) == (theirs.nodes, theirs.service, theirs.db)


def test_prometheus_adapter_reads_the_prometheus_the_docs_install():
    installs = helm_installs()
    stack, adapter = installs["kube-prometheus-stack"], installs["prometheus-adapter"]
    assert adapter["values"] == [yaml.safe_load(
        (KUBE / "prometheus-adapter" / "values.yaml").read_text())]
    url = adapter["values"][0]["prometheus"]["url"]
    # prometheus-operator's Service for every Prometheus, in its namespace.
    assert re.fullmatch(rf"http://prometheus-operated\.{stack['namespace']}\.svc", url), url
