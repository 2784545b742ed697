"""Every command the docs show runs as written.

Each line of a ``bash`` block in README.md and docs/*.md is one of:

* a ``make`` target: ``make -n`` (a dry run) must accept it, and every
  ``VAR=value`` it sets must be a variable the Makefile reads;
* one of the project's programs (``chat-client``, ``chat-bench``,
  ``chat-cluster``, ``chat-chaos``, ``python -m chat...``): its real argument
  parser must accept the line; ``chat-client ... send`` and ``--help`` lines
  are also run, against a cluster this test starts;
* ``. .venv/bin/activate``: the file ``make install`` makes is there;
* another ``.venv/bin/`` program (a package's, such as cosmic-ray's
  ``cr-report``): it is there and answers ``--help``;
* a command listed in ``ELSEWHERE`` with the reason it is checked elsewhere.

Anything else fails the test: a command the docs show and nothing checks.
Output belongs in ``text`` blocks, not ``bash`` ones.  The README's layout
table is held to the tree, and its configuration table to the settings.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from chat import __main__ as chat_main
from chat.tools import bench, chaos, churn, client, cluster, storebench, sweep

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = {
    "chat-client": client.build_parser,
    "chat-bench": bench.build_parser,
    "chat-cluster": cluster.build_parser,
    "chat-chaos": chaos.build_parser,
    "python -m chat": chat_main.build_parser,
    "python -m chat.tools.sweep": sweep.build_parser,
    "python -m chat.tools.churn": churn.build_parser,
    "python -m chat.tools.chaos": chaos.build_parser,
    "python -m chat.tools.storebench": storebench.build_parser,
}
# Commands of other programs, and where they are checked.
ELSEWHERE = {
    "docker": "compose.yaml is validated against the compose schema (test_cluster.py)",
    "git": "the project's own history",
    "kubectl": "manifests are rendered and validated in their own tests",
    "helm": "its lines install what deploy/kubernetes expects (test_kubernetes_docs.py)",
}
MAKE_BUILTINS = {"MAKEFLAGS"}


def shell_lines() -> list[tuple[str, str]]:
    """``(where, line)`` for every command line of every bash block."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M):
            start = text[:block.start()].count("\n") + 2
            for offset, line in enumerate(block.group(1).splitlines()):
                if line.strip() and not line.lstrip().startswith("#"):
                    found.append((f"{doc.name}:{start + offset}", line))
    return found


def words(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def program_of(argv: list[str]) -> tuple[str, list[str]] | None:
    """The name under which ``argv`` is one of our programs, and its arguments."""
    if argv[0].endswith("python") or argv[0].endswith("python3"):
        if argv[1:2] == ["-m"] and len(argv) > 2:
            name = f"python -m {argv[2]}"
            return (name, argv[3:]) if name in PROGRAMS else None
        return None
    name = Path(argv[0]).name
    return (name, argv[1:]) if name in PROGRAMS else None


def makefile_variables() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Z_]+)\s*[?:]?=", text, re.M)) | set(
        re.findall(r"\$\(([A-Z_]+)\)", text))


LINES = shell_lines()
# The settings the README's configuration table names (held to chat/settings.py below).
SETTING_NAMES = set(re.findall(
    r"`([A-Z][A-Z_]+)`",
    (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]))


def test_the_docs_show_commands():
    assert len(LINES) > 10, LINES


@pytest.mark.parametrize(("where", "line"), LINES, ids=[w for w, _ in LINES])
def test_each_documented_command_is_checked(where, line, monkeypatch):
    argv = words(line)
    while re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # VAR=value command: a setting the replicas read
        name = argv.pop(0).split("=", 1)[0]
        assert name in SETTING_NAMES, f"{where}: {name} is no setting (chat/settings.py)"
    if argv[0] == "make":
        settings = [a for a in argv[1:] if "=" in a]
        unknown = {a.split("=", 1)[0] for a in settings} - makefile_variables() - MAKE_BUILTINS
        assert not unknown, f"{where}: the Makefile reads no {unknown}"
        dry = subprocess.run(["make", "-n", *argv[1:], "DOCKER=no"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, f"{where}: {line}\n{dry.stderr}"
        return
    if argv[0] in (".", "source"):
        assert (ROOT / argv[1]).is_file(), f"{where}: {argv[1]} is not there after make install"
        return
    found = program_of(argv)
    if found is None and argv[0].startswith(".venv/bin/"):
        # A program of a package the project installs (cosmic-ray's
        # cr-report...): there after make install, and it runs.
        helped = subprocess.run([argv[0], "--help"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert helped.returncode == 0, f"{where}: {argv[0]} --help: {helped.stderr}"
        return
    if found is None:
        assert argv[0] in ELSEWHERE, f"{where}: nothing checks {line!r}"
        return
    name, arguments = found
    monkeypatch.setattr(sys, "argv", [name])
    try:
        PROGRAMS[name]().parse_args(arguments)
    except SystemExit as exc:  # --help exits 0; a refusal exits 2
        assert exc.code == 0, f"{where}: {name} refuses {arguments}"


RUNNABLE = [(w, line) for w, line in LINES
            if (found := program_of(words(line))) and (
                "--help" in words(line) or (found[0] == "chat-client" and "send" in words(line)))]


@pytest.mark.slow
@pytest.mark.parametrize(("where", "line"), RUNNABLE, ids=[w for w, _ in RUNNABLE])
def test_documented_commands_that_end_run_against_a_cluster(where, line, shared_clusters):
    target = shared_clusters(replicas=2, mode="pubsub")
    argv = words(line)
    name, arguments = program_of(argv)
    module = {"chat-client": "chat.tools.client", "chat-bench": "chat.tools.bench",
              "chat-cluster": "chat.tools.cluster", "chat-chaos": "chat.tools.chaos"}.get(
                  name, name.removeprefix("python -m "))
    result = subprocess.run([sys.executable, "-m", module, *arguments],
                            env={**os.environ, "CHAT_URL": target.url}, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{where}: {line}\n{result.stderr}"


def test_the_readme_layout_table_matches_the_tree():
    """Every path the layout table names exists, and every module of the
    package is named there (directly or as a file of a named folder)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w./-]+)`", table))
    paths = {n for n in named if "/" in n and not n.startswith("/")}  # not URL paths
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    folders = {p.rstrip("/") + "/" for p in paths if (ROOT / p.rstrip("/")).is_dir()}
    # A bare file name stands for a file of a folder the table names.
    missing += sorted(n for n in named - paths if "." in n and not any(
        (ROOT / f / n).exists() for f in (*folders, "")))
    assert not missing, f"the layout table names what is not there: {missing}"
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "chat").rglob("*.py")
               if p.name != "__init__.py" and "__pycache__" not in p.parts}
    unnamed = sorted(m for m in modules
                     if m not in paths and not any(m.startswith(f) for f in folders))
    assert not unnamed, f"modules the layout table does not name: {unnamed}"


def test_every_setting_is_in_the_readmes_configuration_table():
    import dataclasses

    from chat.settings import Settings

    text = (ROOT / "README.md").read_text()
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([A-Z][A-Z_]+)`", table))
    missing = sorted(f.name.upper() for f in dataclasses.fields(Settings)
                     if f.name.upper() not in named)
    assert not missing, f"settings the README's configuration table does not name: {missing}"


def api_code(function: str, seen: frozenset = frozenset()) -> tuple[set[int], dict]:
    """What a function of chat/api.py can answer, read from its code: the
    statuses of its ``ApiError(status, ...)`` and ``answer(status, ...)``
    calls, and the query parameters of its ``_query_int(request, name,
    default, low, high)`` calls as ``{name: (default, low, high, setting)}``
    (``setting``: the Settings field a bound comes from, else None); the
    ``self.x()`` methods and module functions it calls are read too."""
    import ast
    import types

    from chat import api
    from chat.settings import Settings

    source = ROOT / "chat" / "api.py"
    tree = ast.parse(source.read_text())
    functions = {n.name: n for n in ast.walk(tree)
                 if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    scope = {**vars(api), "self": types.SimpleNamespace(settings=Settings())}
    statuses, query = set(), {}
    for node in ast.walk(functions[function]):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else (
            func.attr if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            and func.value.id == "self" else None)
        if called in ("ApiError", "answer") and isinstance(node.args[0], ast.Constant):
            statuses.add(node.args[0].value)
        elif called == "_query_int":
            name, default, low, high = (eval(compile(ast.Expression(a), str(source), "eval"),
                                             scope) for a in node.args[1:])
            bound = ast.unparse(node.args[4])
            setting = bound.split(".")[-1] if bound.startswith("self.settings.") else None
            query[name] = (default, low, high, setting)
        if called in functions and called not in seen | {function}:
            more_statuses, more_query = api_code(called, seen | {function})
            statuses |= more_statuses
            query |= more_query
    return statuses, query


def test_the_openapi_file_is_valid_and_matches_the_routes():
    """The same operations as the app serves under /api/rooms; each with the
    statuses its handler can answer (its own, and the middleware's and the
    catch-all's, which any call can meet), and the same query parameters with
    the same default and bounds (a bound that is a setting named in the
    parameter's description, its default value in the file)."""
    from openapi_spec_validator import validate
    from ruamel.yaml import YAML

    from chat.app import create_app
    from chat.settings import Settings

    spec = YAML(typ="safe").load((ROOT / "docs" / "openapi.yaml").read_text())
    validate(spec)
    app = create_app(Settings(server_id="docs"))
    handlers = {(r.method, r.resource.canonical): r.handler.__name__
                for r in app.router.routes()
                if r.resource is not None and r.resource.canonical.startswith("/api/rooms")
                and r.method != "HEAD"}
    operations = {(method.upper(), path): operation for path, item in spec["paths"].items()
                  for method, operation in item.items() if method != "parameters"}
    assert set(operations) == set(handlers)
    anywhere = api_code("api_errors")[0] | api_code("not_found")[0]
    assert {404, 500, 503} <= anywhere  # what the reading above must find
    for route, handler in handlers.items():
        statuses, query = api_code(handler)
        operation = operations[route]
        assert {int(s) for s in operation["responses"]} == statuses | anywhere, route
        described = {p["name"]: p for p in operation.get("parameters", ()) if p["in"] == "query"}
        assert set(described) == set(query), route
        for name, (default, low, high, setting) in query.items():
            schema = described[name]["schema"]
            assert (schema.get("default"), schema.get("minimum"), schema.get("maximum")) == (
                default, low, high), (route, name)
            assert setting is None or setting.upper() in described[name]["description"]


def test_every_breakage_patch_still_applies():
    """``make mutation-patches`` breaks the code on purpose; a patch that no
    longer applies to the code it breaks checks nothing."""
    import subprocess

    stale = [p.name for p in sorted((ROOT / "docs" / "mutations").glob("*.patch"))
             if subprocess.run(["git", "apply", "--check", str(p)], cwd=ROOT,
                               capture_output=True).returncode != 0]
    assert not stale, f"patches that no longer apply: {stale}"
