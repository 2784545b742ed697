"""Processes of our own: started in their own session, stopped by PID.

What ``chat-cluster`` (``cluster.py``) and the tests' fixtures share to run
real services on this machine: finding a program, a free port below the
ephemeral range, starting a process with its output in a log file, waiting
until it answers, and stopping it (and only it: a PID is checked against the
process's start time before it is signalled, so a reused PID is left alone).
``RedisProcess`` is a redis-server of our own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: processes run from here
INSTALL_HINTS = {
    "nginx": "install NGINX (Debian/Ubuntu: apt-get install nginx; macOS: brew install nginx)",
    "redis-server": "install Redis (Debian/Ubuntu: apt-get install redis-server; "
                    "macOS: brew install redis), or pass --redis-url",
    "redis-cli": "install Redis's tools (Debian/Ubuntu: apt-get install redis-tools)",
    "redis-benchmark": "install Redis's tools (Debian/Ubuntu: apt-get install redis-tools)",
}


class ClusterError(RuntimeError):
    """Something the operator must fix; the message is one line saying what."""


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999).

    A port the kernel hands out itself is ephemeral, and a client connecting
    to an ephemeral port that nothing listens on (a stopped Redis) can, rarely,
    be given that same port as its source and connect to itself: a "server"
    that echoes every command.  Ports from 20000-32767 cannot collide so.

    A port is free when asked, and taken only when its server starts: a
    port handed out once is not handed out again by this process (a
    cluster picks NGINX's port before its replicas and Redis start).
    """
    for _ in range(200):
        port = random.randint(20000, 32767)
        if claim(port):
            return port
    raise ClusterError("no free port found in 20000-32767")


ISSUED: set[int] = set()  # ports this process has handed out


def claim(*ports: int) -> bool:
    """Hand out ``ports`` if none was handed out before and each binds now."""
    if any(port in ISSUED for port in ports):
        return False
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    ISSUED.update(ports)
    return True


# NGINX lives in sbin, which a non-root user's PATH often lacks.
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin")


def find_binary(name: str) -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    path = shutil.which(name, path=search)
    if path is None:
        raise ClusterError(f"{name} not found: {INSTALL_HINTS[name]}")
    return path


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (NGINX would bind it)."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def alive(pid: int | None) -> bool:
    """Is ``pid``, or any process of the group it leads, alive?

    Processes started here lead their own session and group, so the group
    also covers gunicorn's worker after its master died.
    """
    if not pid:
        return False
    _reap(pid)
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel
        for probe in (os.kill, os.killpg):
            try:
                probe(pid, 0)
                return True
            except PermissionError:
                return True
            except ProcessLookupError:
                continue
        return False
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            head, tail = stat.read_text().rsplit(") ", 1)
            fields = tail.split()
            # fields[0] is the state, fields[2] the process group
            if fields[0] in ("Z", "X"):
                continue
            if int(fields[2]) == pid or int(head.split(" (", 1)[0]) == pid:
                return True
    return False


def started_at(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, from /proc), or None.

    Together with the PID this names one process for good: a PID can be
    reused, a (PID, start time) pair cannot.
    """
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _signal(pid: int, sig: int) -> None:
    """SIGKILL goes to the whole group (nothing may survive it); any other
    signal to the leader, which passes it on in its own way (gunicorn's
    master tells its worker to drain)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
    if sig == signal.SIGKILL:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


def stop_pids(pids: list[int | None], sig: int = signal.SIGTERM, grace: float = 25.0) -> None:
    """Send ``sig`` to each; SIGKILL what is left after ``grace`` seconds.

    Returns once every one of them, with its children, is gone.
    """
    pids = [pid for pid in pids if alive(pid)]
    for pid in pids:
        _signal(pid, sig)
    deadline = time.monotonic() + grace
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            _signal(pid, signal.SIGKILL)
    while any(alive(pid) for pid in pids):
        time.sleep(0.02)


def stop_pid(pid: int | None, sig: int = signal.SIGTERM, grace: float = 25.0) -> None:
    stop_pids([pid], sig, grace)


# Processes this Python process started: polled so that they do not linger as
# zombies once they exit (a later chat-cluster call is not their parent and
# only signals them).
_children: dict[int, subprocess.Popen] = {}


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]


def still_running() -> list[tuple[int, list[str]]]:
    """The processes started here (``spawn``) that have not exited: pid and argv."""
    return [(pid, list(proc.args)) for pid, proc in list(_children.items())
            if proc.poll() is None]


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=ROOT, start_new_session=True)
    _children[proc.pid] = proc
    return proc.pid


def wait_until(check, timeout: float, what: str, log: Path | None = None,
               pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not alive(pid):
            break
        time.sleep(0.05)
    tail = ""
    if log is not None and log.exists():
        lines = log.read_text(errors="replace").strip().splitlines()
        # The most telling line is usually the last exception or error.
        errors = [line for line in lines if re.search(r"(Error|Exception|error):", line)]
        tail = (errors or lines or [""])[-1].strip()
    state = "exited" if pid is not None and not alive(pid) else f"not ready after {timeout:.0f} s"
    raise ClusterError(f"{what} {state}" + (f": {tail}" if tail else ""))


@dataclasses.dataclass
class RedisProcess:
    """A redis-server of our own.

    Without ``data_dir`` it keeps nothing on disk (the tests' throwaway
    Redis).  With one it keeps an append-only file there (AOF, fsync once a
    second), so a restart brings every room's history back; ``args`` are
    more redis-server options (a replica's ``--replicaof``, cluster mode).
    """

    port: int
    log: Path
    pid: int | None = None
    password: str | None = None
    data_dir: Path | None = None
    args: tuple[str, ...] = ()
    config: Path | None = None  # a config file read first (a sentinel's)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [find_binary("redis-server"), *([str(self.config)] if self.config else []),
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--daemonize", "no"]
        if self.data_dir is None:
            argv += ["--appendonly", "no"]
        else:
            Path(self.data_dir).mkdir(parents=True, exist_ok=True)
            argv += ["--dir", str(self.data_dir), "--appendonly", "yes",
                     "--appendfsync", "everysec"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.pid = spawn(argv + list(self.args), self.log)
        wait_until(self.answers, 10, f"redis-server on port {self.port}", self.log, self.pid)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_pid(self.pid, sig)
        self.pid = None
