"""Apply each breakage in docs/mutations/ and check that its tests fail.

Every patch there breaks the service on purpose, the way a review found the
suite blind to (docs/testing.md lists them).  For each one this script runs
``git apply``, the tests named below (each selection separately), and
``git apply -R``, whatever happens, and prints which selections failed.  A
patch that no selection fails is a hole in the suite: the exit status is 1.

    .venv/bin/python tests/mutation_patches.py [NAME ...]   # make mutation-patches

The worktree must be clean where the patches apply (they are reverted even
on Ctrl-C).  Replica processes import ``chat`` from this worktree, so a
patch reaches them too.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "docs" / "mutations"
PYTEST = [str(ROOT / ".venv" / "bin" / "pytest"), "-q", "-x", "-p", "no:cacheprovider",
          "-o", "addopts="]

# patch name -> pytest selections, each expected to fail with the patch in.
CATCHERS = {
    "shards-never-follow-a-failover": [
        ["tests/test_cluster_pubsub.py", "-k", "master_killed"]],
    "shards-ignore-a-migrated-slot": [
        ["tests/test_cluster_pubsub.py", "-k", "migrated"]],
    "cluster-readiness-sees-only-the-control-channel": [
        ["tests/test_cluster_pubsub.py", "-k", "readyz"]],
    "subscriber-forgets-its-rooms-after-a-break": [
        ["tests/test_room_channels.py", "-k", "subscribed_again"],
        ["tests/test_failures.py", "-k", "redis_outage and pubsub"]],
    "sequencer-drops-every-fifth": [
        ["tests/test_backplane.py", "-k", "stream_crosses"],
        ["tests/test_history.py", "-k", "cut and pubsub and catch-up"]],
    "sequencer-writes-twice": [
        ["tests/test_backplane.py", "-k", "stream_crosses"],
        ["tests/test_chaos.py", "-k", "counts_add_up and pubsub"]],
    "filler-reads-only-the-first-hole": [
        ["tests/test_ordering.py", "-k", "every_hole"],
        ["tests/test_history.py", "-k", "cut and socketio and live-only"]],
    "acks-ok-while-redis-is-down": [
        ["tests/test_chaos.py", "-k", "counts_add_up and pubsub"]],
    "resume-skips-the-first-missed-message": [
        ["tests/test_failures.py", "-k", "sigterm"],
        ["tests/test_failures.py", "-k", "rolling"],
        ["tests/test_cluster_pubsub.py", "-k", "resumes"]],
    "session-gives-up-a-repair-cut-by-a-reconnection": [
        ["tests/test_history.py", "-k", "repair_cut"]],
    "clean-text-without-type-checks": [
        ["tests/test_bad_input.py", "-k", "malformed"]],
    "presence-entries-live-1.5x-ttl": [
        ["tests/test_presence.py", "-k", "crashed and pubsub"]],
    "token-alg-none-accepted": [
        ["tests/test_auth.py", "-k", "each_bad_token"]],
    "token-algorithm-confusion-unnamed": [
        ["tests/test_auth.py", "-k", "each_bad_token"]],
    "open-names-never-refused": [
        ["tests/test_names.py", "-k", "confusable"]],
    "api-retry-posts-again": [
        ["tests/test_api.py", "-k", "retried"]],
    "recovery-claims-a-live-session": [
        ["tests/test_recovery_sessions.py", "-k", "live_session"],
        ["tests/test_recovery.py", "-k", "forged and pubsub"]],
    "recovery-replays-from-one-too-far": [
        ["tests/test_recovery.py", "-k", "replica_dies and pubsub and websocket"]],
    "recovery-seats-expire-with-presence-ttl": [
        ["tests/test_recovery.py", "-k", "past_the_presence and pubsub"]],
    "recovery-parks-nothing": [
        ["tests/test_recovery.py", "-k", "client_closed and socketio and polling"]],
    "api-answers-in-each-replica": [
        ["tests/test_api.py", "-k", "another_replica"]],
    "public-key-file-ignored": [
        ["tests/test_auth.py", "-k", "public_key_file"]],
    "api-bug-answered-in-plain-text": [
        ["tests/test_api.py", "-k", "json_500"]],
    "api-status-missing-from-openapi": [
        ["tests/test_docs.py", "-k", "openapi"]],
    "compose-public-key-not-passed": [
        ["tests/test_cluster.py", "-k", "public_key_file"]],
    "monitoring-command-without-redis": [
        ["tests/test_monitoring.py", "-k", "starts_a_redis"]],
}


def git(*args: str) -> None:
    subprocess.run(["git", *args], cwd=ROOT, check=True)


def check(name: str) -> list[bool]:
    """Whether each selection failed with the patch ``name`` applied."""
    patch = str(PATCHES / f"{name}.patch")
    git("apply", patch)
    try:
        failed = []
        for selection in CATCHERS[name]:
            with tempfile.TemporaryDirectory(prefix="mutation-") as base:
                run = subprocess.run([*PYTEST, "--basetemp", base, *selection], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            failed.append(run.returncode == 1)  # 1: tests failed (not an error)
            print(f"  {'caught' if failed[-1] else 'MISSED'}  {' '.join(selection)}",
                  flush=True)
        return failed
    finally:
        git("apply", "-R", patch)


def main(argv: list[str]) -> int:
    names = argv or list(CATCHERS)
    unknown = [n for n in names if n not in CATCHERS]
    on_disk = {p.stem for p in PATCHES.glob("*.patch")}
    if unknown or on_disk != set(CATCHERS):
        print(f"unknown {unknown}; patches without catchers: {on_disk - set(CATCHERS)}")
        return 2
    survivors = []
    for name in names:
        print(name, flush=True)
        if not any(check(name)):
            survivors.append(name)
    print("every patch was caught" if not survivors else f"NOT caught: {survivors}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
