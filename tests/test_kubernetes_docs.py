"""docs/deploy.md held to deploy/kubernetes, offline.

test_docs.py leaves the kubectl lines of the docs to this file: the
manifests they name render, the overlay the docs tell a reader to write
renders as written, and the Secret they create is the one the Deployment
reads.
"""

from __future__ import annotations

import os
import re
import shlex
import textwrap

import yaml
from kube import ROOT, chat_container, kustomize, one, pod_spec, secret_refs
from kube import overlay as rendered
from test_docs import shell_lines

DEPLOY_DOC = ROOT / "docs" / "deploy.md"
LINES = [line for where, line in shell_lines() if where.startswith("deploy.md")]


def kubectl_lines(phrase: str) -> list[list[str]]:
    """The docs' kubectl lines holding ``phrase``, split."""
    return [shlex.split(line) for line in LINES
            if line.split()[0] == "kubectl" and phrase in line]


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
