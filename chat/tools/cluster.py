"""The cluster as local processes: Redis, N gunicorn replicas, NGINX.

Redis is one server (with AOF), a Sentinel group or a Cluster
(``--redis``, ``make up REDIS=...``): ``redis_topology.py`` starts it.

This is the same topology as ``compose.yaml``, for machines without a Docker
engine (and for the test suite, which drives it through the same class).
``make up`` / ``make scale`` / ``make down`` call the ``chat-cluster``
command defined here when Docker is absent.

Every process is started in its own session with its output in a log file,
and recorded (PID, port, command) in ``<state>/cluster.json``, so a later
``chat-cluster`` call, a test's teardown or ``make down`` can find and stop
exactly those processes by PID, and nothing else (``processes.py``).  NGINX
is rendered, checked, started and reloaded by ``nginx.py``.

Layout of the state folder (``.run/`` by default, git-ignored)::

    cluster.json          what runs: ports, PIDs, mode
    logs/redis.log        logs/replica-N.log        logs/nginx.log
    nginx/nginx.conf      deploy/nginx.conf rendered for the replica ports
    redis-data/           the single Redis's append-only file
    redis-sentinel/, sentinel/, redis-cluster/   the other topologies' files
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from . import redis_topology
from .nginx import NginxFront
from .processes import (  # free_port and RedisProcess: the tests' fixtures take them here
    ROOT,
    ClusterError,
    RedisProcess,
    alive,
    find_binary,
    free_port,
    http_ok,
    port_free,
    spawn,
    started_at,
    stop_pid,
    stop_pids,
    wait_until,
)

GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"


@dataclasses.dataclass
class Replica:
    server_id: str
    port: int
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LocalCluster(NginxFront):
    """Redis + N replicas + NGINX as local processes, recorded in a state folder."""

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir).resolve()
        self.state_file = self.state_dir / "cluster.json"
        self.logs = self.state_dir / "logs"
        self.port = 0
        self.mode = "socketio"
        self.redis_url = ""
        self.redis: RedisProcess | None = None  # the single Redis (REDIS=single)
        self.topology: redis_topology.RedisTopology | None = None  # ours, of any kind
        self.replicas: list[Replica] = []
        self.nginx_pid: int | None = None
        self.extra_env: dict[str, str] = {}
        if self.state_file.exists():
            self._load()

    # -- state ----------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _load(self) -> None:
        state = json.loads(self.state_file.read_text())
        self.port, self.mode = state["port"], state["mode"]
        self.redis_url = state["redis_url"]
        self.extra_env = state.get("env", {})
        if state.get("topology"):
            self.topology = redis_topology.load(state["topology"], self.state_dir, self.logs)
            self.redis = self.topology.nodes.get("redis")
        self.replicas = [Replica(**r) for r in state["replicas"]]
        self.nginx_pid = state.get("nginx_pid")
        # A PID recorded before a reboot or a crash may belong to some other
        # process by now: forget every PID whose start time has changed, so
        # that `down` never signals a stranger.
        starts = state.get("starts", {})

        def ours(pid):
            return pid if pid and starts.get(str(pid)) == started_at(pid) else None

        self.nginx_pid = ours(self.nginx_pid)
        for replica in self.replicas:
            replica.pid = ours(replica.pid)
        for node in self.topology.nodes.values() if self.topology else ():
            node.pid = ours(node.pid)

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "port": self.port, "mode": self.mode, "redis_url": self.redis_url,
            "env": self.extra_env,
            "topology": self.topology.state() if self.topology else None,
            "replicas": [dataclasses.asdict(r) for r in self.replicas],
            "nginx_pid": self.nginx_pid,
            "starts": {str(pid): started_at(pid) for pid in self._pids()},
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    def running(self) -> bool:
        return any(alive(pid) for pid in self._pids())

    def _pids(self) -> list[int]:
        pids = [r.pid for r in self.replicas if r.pid]
        if self.nginx_pid:
            pids.append(self.nginx_pid)
        if self.topology:
            pids += self.topology.pids()
        return pids

    # -- lifecycle ------------------------------------------------------
    def up(self, replicas: int = 3, mode: str = "socketio", port: int = 8080,
           redis_url: str | None = None, env: dict[str, str] | None = None,
           proxy: bool = True, redis: str = "single") -> None:
        """Start everything; ``proxy=False`` leaves NGINX out (backplane tests).

        ``mode="memory"`` is one replica with no Redis (a baseline for
        benchmarks): several such replicas would be several separate chats.
        """
        if self.running():
            raise ClusterError(
                f"a cluster is already running from {self.state_dir} "
                "(make down, or chat-cluster down, first)")
        if replicas < 1:
            raise ClusterError("replicas must be at least 1")
        if mode == "memory" and replicas != 1:
            raise ClusterError("memory mode runs exactly one replica (no Redis to join them)")
        nginx = find_binary("nginx") if proxy else None
        if proxy and not port_free(port):
            # Another program (another cluster's NGINX, say) would answer
            # our health check, and ours would die on "address in use".
            raise ClusterError(f"port {port} is taken by another program "
                               "(stop it, or choose another: make up PORT=...)")
        self.port, self.mode = port, mode
        self.extra_env = dict(env or {})
        self.replicas, self.nginx_pid, self.redis, self.topology = [], None, None, None
        try:
            if mode == "memory":
                self.redis_url = ""  # replicas read an empty REDIS_URL as unset
            elif redis_url:
                self.redis_url = redis_url
            else:
                self.topology = redis_topology.create(redis, self.state_dir, self.logs)
                self._save()  # its PIDs, as they come, for a down after a failed up
                self.topology.start()
                self.redis = self.topology.nodes.get("redis")
                self.redis_url = self.topology.url
            self._save()
            self._add_replicas(replicas)
            if nginx:
                self._start_nginx(nginx)
        except BaseException:
            self.down()
            raise

    def scale(self, replicas: int) -> list[str]:
        """Run ``replicas`` replicas; return the names of dead ones restarted."""
        if not self.running() or not self.nginx_pid:
            raise ClusterError("no cluster is running (make up first)")
        if replicas < 1:
            raise ClusterError("replicas must be at least 1")
        revived = self.revive(self.replicas[:replicas])
        current = len(self.replicas)
        if replicas > current:
            self._add_replicas(replicas - current)
            self._reload_nginx()
        elif replicas < current:
            leaving = self.replicas[replicas:]
            self.replicas = self.replicas[:replicas]
            # NGINX first, so no new client is sent to a replica that is going.
            self._reload_nginx()
            self._save()
            stop_pids([replica.pid for replica in leaving])
        return revived

    def revive(self, replicas: list[Replica]) -> list[str]:
        """Start again those of ``replicas`` whose process has died."""
        dead = [r for r in replicas if not alive(r.pid)]
        for replica in dead:
            self.start_replica(replica)
            self._save()
        for replica in dead:
            self.wait_replica(replica)
        return [r.server_id for r in dead]

    def down(self) -> None:
        # NGINX first (no new traffic; SIGTERM is its fast shutdown, which
        # also ends old workers still holding WebSockets), then replicas
        # (graceful), then Redis.
        stop_pid(self.nginx_pid, signal.SIGTERM)
        self.nginx_pid = None
        stop_pids([replica.pid for replica in self.replicas])
        self.replicas = []
        if self.topology:
            self.topology.stop()
            self.topology = self.redis = None
        if self.state_file.exists():
            self.state_file.unlink()

    def forget(self) -> None:
        """Remove what ``up`` wrote under the state folder (logs and Redis's
        files included: the AOF keeps history across Redis restarts, and
        ``make down`` means starting afresh)."""
        redis_files = redis_topology.folders(self.state_dir)
        for folder in (self.logs, self.state_dir / "nginx", *redis_files):
            shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()  # only if nothing else is in it

    # -- redis ----------------------------------------------------------
    def stop_redis(self) -> None:
        """Stop the cluster's own Redis (an outage); the replicas stay up."""
        self.redis.stop()
        self._save()

    def start_redis(self) -> None:
        """Start the cluster's own Redis again, on the same port."""
        self.redis.start()
        self._save()

    # -- replicas -------------------------------------------------------
    def replica_env(self, replica: Replica) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update({
            "REDIS_URL": self.redis_url,
            # memory: no Redis, and REDIS_MODE is then not read at all
            "REDIS_MODE": "socketio" if self.mode == "memory" else self.mode,
            "SERVER_ID": replica.server_id,
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def _add_replicas(self, count: int) -> None:
        taken = {int(r.server_id.rsplit("-", 1)[1]) for r in self.replicas}
        new = []
        number = 1
        while len(new) < count:
            if number not in taken:
                new.append(Replica(server_id=f"replica-{number}", port=free_port()))
            number += 1
        for replica in new:
            self.start_replica(replica)
            self.replicas.append(replica)
            self._save()
        for replica in new:
            self.wait_replica(replica)
        self.replicas.sort(key=lambda r: int(r.server_id.rsplit("-", 1)[1]))
        self._save()

    def start_replica(self, replica: Replica) -> None:
        argv = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF),
                "--bind", f"127.0.0.1:{replica.port}", "--chdir", str(ROOT)]
        replica.pid = spawn(argv, self.logs / f"{replica.server_id}.log",
                            self.replica_env(replica))

    def wait_replica(self, replica: Replica, timeout: float = 30) -> None:
        """Wait until the replica serves and, with our own Redis, is subscribed.

        With an external REDIS_URL only liveness is awaited: that Redis may
        be down, and the replica is meant to start anyway.
        """
        check = "readyz" if self.topology is not None else "healthz"
        wait_until(lambda: http_ok(f"{replica.url}/{check}"), timeout,
                   replica.server_id, self.logs / f"{replica.server_id}.log", replica.pid)

    def replica(self, server_id: str) -> Replica:
        for replica in self.replicas:
            if replica.server_id == server_id:
                return replica
        raise KeyError(server_id)

    def kill_replica(self, server_id: str, sig: int = signal.SIGKILL) -> None:
        """Stop one replica with ``sig`` (a crash by default); NGINX keeps it listed."""
        replica = self.replica(server_id)
        stop_pid(replica.pid, sig, grace=30)

    def restart_replica(self, server_id: str) -> None:
        """Restart one replica without turning a client away (rolling restart).

        NGINX stops sending it new clients first (graceful reload), then the
        replica drains on SIGTERM, its clients reconnect to the others, and it
        rejoins NGINX once healthy.  Stopping it while still listed would get
        it marked failed for fail_timeout after it is back, and restarting
        every replica in a row could leave NGINX with no live upstream.
        """
        replica = self.replica(server_id)
        proxied = bool(self.nginx_pid)
        if proxied:
            self._reload_nginx(leaving=server_id)
        stop_pid(replica.pid)
        self.start_replica(replica)
        self._save()
        self.wait_replica(replica)
        if proxied:
            self._reload_nginx()

    # -- reporting ------------------------------------------------------
    def status(self) -> list[tuple[str, str, int | None, str]]:
        rows = []
        if self.topology:
            rows += self.topology.rows()
        elif self.redis_url:
            rows.append(("redis", self.redis_url, None, "external"))
        for r in self.replicas:
            state = "down"
            if alive(r.pid):
                state = "ready" if http_ok(f"{r.url}/readyz") else "up, not ready"
            rows.append((r.server_id, f"127.0.0.1:{r.port}", r.pid, state))
        rows.append(("nginx", f"127.0.0.1:{self.port}", self.nginx_pid,
                     "up" if alive(self.nginx_pid) else "down"))
        return rows


def _print_status(cluster: LocalCluster) -> None:
    for name, where, pid, state in cluster.status():
        print(f"  {name:<12} {where:<22} pid {pid or '-':<8} {state}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-cluster", description="Run the chat cluster as local processes.")
    parser.add_argument("--state-dir", default=str(ROOT / ".run"),
                        help="where PIDs, logs and the rendered nginx.conf live")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Redis, N replicas and NGINX")
    up.add_argument("--replicas", "-n", type=int, default=3)
    up.add_argument("--mode", choices=("socketio", "pubsub", "memory"), default=None,
                    help="backplane; memory = one replica without Redis (default: pubsub "
                         "on a Redis Cluster, the only one that runs there, else socketio)")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--redis-url", default="", help="use this Redis instead of starting one")
    up.add_argument("--redis", choices=redis_topology.KINDS, default="single",
                    help="the Redis to start: one server (AOF), a Sentinel group, a Cluster")
    scale = sub.add_parser("scale", help="change the number of replicas")
    scale.add_argument("replicas", type=int)
    sub.add_parser("down", help="stop everything")
    sub.add_parser("ps", help="show what runs")
    logs = sub.add_parser("logs", help="show the logs")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("name", nargs="?", help="one process: replica-2, nginx, redis...")
    sub.add_parser("monitor", help="every command Redis runs, as it runs it (redis-cli monitor)")
    return parser


def default_mode(redis: str, redis_url: str) -> str:
    """pubsub on a Redis Cluster (python-socketio's manager, socketio mode,
    has no Cluster support: its replicas would refuse to start), else socketio."""
    from ..redis_url import parse_redis_url

    if not redis_url:
        return "pubsub" if redis == "cluster" else "socketio"
    try:
        return "pubsub" if parse_redis_url(redis_url).topology == "cluster" else "socketio"
    except ValueError:
        return "socketio"  # the replicas refuse the URL, in one line naming it


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    cluster = LocalCluster(Path(args.state_dir))
    try:
        if args.command == "up":
            cluster.up(args.replicas, args.mode or default_mode(args.redis, args.redis_url),
                       args.port, args.redis_url or None,
                       redis=args.redis)
            print(f"chat is up at http://localhost:{cluster.port}/ "
                  f"({len(cluster.replicas)} replicas, mode {cluster.mode})")
            _print_status(cluster)
        elif args.command == "scale":
            revived = cluster.scale(args.replicas)
            if revived:
                print(f"restarted {', '.join(revived)} (had stopped)")
            print(f"scaled to {len(cluster.replicas)} replicas")
            _print_status(cluster)
        elif args.command == "down":
            cluster.down()
            cluster.forget()
            print("chat is down")
        elif args.command == "monitor":
            if not cluster.redis:
                raise ClusterError("this cluster runs no Redis of its own "
                                   "(none, or an external REDIS_URL)")
            redis_cli = find_binary("redis-cli")
            os.execvp(redis_cli, [redis_cli, "-p", str(cluster.redis.port), "monitor"])
        elif args.command == "ps":
            if not cluster.state_file.exists():
                print("no cluster is running")
                return 0
            _print_status(cluster)
        elif args.command == "logs":
            pattern = f"{args.name}.log" if args.name else "*.log"
            files = sorted(str(p) for p in cluster.logs.glob(pattern))
            if not files:
                known = sorted(p.stem for p in cluster.logs.glob("*.log"))
                print(f"no log for {args.name} (there are: {', '.join(known)})" if known
                      and args.name else "no logs yet")
                return 1 if args.name and known else 0
            tail = ["tail", "-n", "40"] + (["-F"] if args.follow else []) + files
            os.execvp("tail", tail)
    except ClusterError as exc:
        print(f"chat-cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
