"""The chat's Redis as local processes: one server, a Sentinel group, or a Cluster.

``chat-cluster up --redis KIND`` (``make up REDIS=KIND``) and the tests'
fixtures start one of three topologies through :func:`create`:

``single``    one redis-server with an append-only file (AOF, fsync every
              second) in ``<state>/redis-data``, so history survives a restart
``sentinel``  a master, one replica and three sentinels watching them under
              the name ``chat`` (quorum 2, a master silent for 1 s is down)
``cluster``   six nodes in cluster mode, made into three masters with one
              replica each by ``redis-cli --cluster create``

Every data node keeps an AOF in a folder of its own (``redis-sentinel/``,
``redis-cluster/`` in the state folder): a replica writes its copy of the
master there, and a redis-server loads what its folder holds when it starts.

Each node is a :class:`~chat.tools.processes.RedisProcess`, stopped by PID
like everything else ``chat-cluster`` starts.  A topology writes what it
started into the cluster's state file (:meth:`RedisTopology.state`) and is
rebuilt from it (:func:`load`) by later ``chat-cluster`` calls; ``make ps``
asks each node for its role (``ROLE``) as it runs, since a failover swaps them.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from .processes import (
    ClusterError,
    RedisProcess,
    alive,
    claim,
    find_binary,
    stop_pids,
    wait_until,
)

KINDS = ("single", "sentinel", "cluster")
SERVICE = "chat"  # the master's name the sentinels know
DOWN_AFTER_MS = 1000  # a master silent this long is down (sentinel's default: 30 s)
NODE_TIMEOUT_MS = 2000  # a cluster node silent this long fails over (default 15 s)
CLUSTER_PORTS = (20000, 21999)  # a node's bus port is port + 10000: below 32768
# A master waits 5 s by default before sending a new replica its copy (to
# serve several at once); here a replica back from a failover must count for
# WAIT at once.
SYNC_AT_ONCE = ("--repl-diskless-sync-delay", "0")


class RedisTopology:
    """Named redis-server processes and the URL that reaches them."""

    def __init__(self, kind: str, nodes: dict[str, RedisProcess], state_dir: Path):
        self.kind = kind
        self.nodes = nodes  # name -> process: redis-1.., sentinel-1..
        self.state_dir = state_dir

    @property
    def url(self) -> str:
        ports = [f"127.0.0.1:{n.port}" for name, n in self.nodes.items()]
        if self.kind == "sentinel":
            sentinels = [p for p, name in zip(ports, self.nodes, strict=True)
                         if name.startswith("sentinel")]
            return f"redis+sentinel://{','.join(sentinels)}/0/{SERVICE}"
        if self.kind == "cluster":
            return f"redis+cluster://{','.join(ports)}"
        return self.nodes["redis"].url

    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes.values() if n.pid]

    def start(self) -> None:
        try:
            for node in self.nodes.values():
                node.start()
            if self.kind == "cluster":
                self._create_cluster()
            elif self.kind == "sentinel":
                # A failover needs sentinels that know the replica and each
                # other (they learn both from the master within seconds).
                wait_until(self._sentinels_agree, 30, "the sentinels")
            # Up means every replica holds a copy: WAIT counts only those.
            wait_until(self._replicas_in_sync, 30, "the Redis replicas' first sync")
        except BaseException:
            self.stop()
            raise

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_pids(self.pids(), sig)
        for node in self.nodes.values():
            node.pid = None

    def kill(self, name: str) -> None:
        """SIGKILL one node (a crash)."""
        stop_pids([self.nodes[name].pid], signal.SIGKILL)
        self.nodes[name].pid = None

    def restart(self, name: str) -> None:
        """Start a stopped node again.  In a Sentinel group it starts as the
        current master's replica, as an orchestrator would start it: started
        as a master, it would wait up to ten seconds for the sentinels to
        demote it (and WAIT would find no replica meanwhile)."""
        node = self.nodes[name]
        master = None
        if self.kind == "sentinel":
            # Ask until a sentinel answers with a live master: a None here
            # (one sentinel busy, or voting) would start the node as a second
            # master until the sentinels demote it.
            deadline = time.monotonic() + 10
            while (master := self.master()) in (None, name) and time.monotonic() < deadline:
                time.sleep(0.1)
        if master is not None and master != name:
            args = [a for a in node.args]
            if "--replicaof" in args:
                del args[args.index("--replicaof"):args.index("--replicaof") + 3]
            node.args = (*args, "--replicaof", "127.0.0.1", str(self.nodes[master].port))
        node.start()

    def master(self) -> str | None:
        """The name of the node the sentinels call master now (Sentinel only)."""
        for name, node in self.nodes.items():
            if name.startswith("sentinel") and alive(node.pid):
                reply = command(node.port, "SENTINEL", "get-master-addr-by-name", SERVICE)
                if isinstance(reply, list) and reply:
                    port = int(reply[1])
                    return next((n for n, p in self.nodes.items() if p.port == port), None)
        return None

    def _replicas_in_sync(self) -> bool:
        for name, node in self.nodes.items():
            role = [] if name.startswith("sentinel") else command(node.port, "ROLE") or []
            if role[:1] == ["slave"] and role[3] != "connected":
                return False
        return True

    def _sentinels_agree(self) -> bool:
        sentinels = [n for name, n in self.nodes.items() if name.startswith("sentinel")]
        for node in sentinels:
            state = command(node.port, "SENTINEL", "MASTER", SERVICE) or {}  # parsed by redis-py
            if (int(state.get("num-slaves", 0)) != 1
                    or int(state.get("num-other-sentinels", 0)) != len(sentinels) - 1):
                return False
        return True

    def rows(self) -> list[tuple[str, str, int | None, str]]:
        """(name, address, pid, role) of each node, for ``make ps``."""
        rows = []
        for name, node in self.nodes.items():
            role = "down"
            if alive(node.pid):
                reply = command(node.port, "ROLE")
                role = reply[0] if isinstance(reply, list) else "up, not answering"
                role = {"slave": "replica"}.get(role, role)
            rows.append((name, f"127.0.0.1:{node.port}", node.pid, role))
        return rows

    def state(self) -> dict:
        def node(n: RedisProcess) -> dict:
            return {"port": n.port, "pid": n.pid, "args": list(n.args),
                    "data_dir": str(n.data_dir) if n.data_dir else None,
                    "config": str(n.config) if n.config else None}

        return {"kind": self.kind, "nodes": {name: node(n) for name, n in self.nodes.items()}}

    def _create_cluster(self) -> None:
        ports = [str(n.port) for n in self.nodes.values()]
        argv = [find_binary("redis-cli"), "--cluster", "create",
                *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "1", "--cluster-yes"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            last = (result.stdout + result.stderr).strip().splitlines()[-1:]
            raise ClusterError(f"redis-cli --cluster create failed: {' '.join(last)}")
        wait_until(lambda: all("cluster_state:ok" in (command(n.port, "CLUSTER", "INFO") or "")
                               for n in self.nodes.values()), 20, "the Redis Cluster")
        # Slots assigned is not replicas in sync: until each replica's link
        # to its master is up, a WAIT for one replica times out (seen in CI
        # on a loaded machine, right after the cluster was created).
        wait_until(self._replicas_linked, 30, "the Redis Cluster's replicas")

    def _replicas_linked(self) -> bool:
        masters = replicas = 0
        for node in self.nodes.values():
            info = command(node.port, "INFO", "replication")
            if not isinstance(info, dict):
                return False
            if info.get("role") == "master":
                masters += 1
                if not info.get("connected_slaves"):
                    return False
            elif info.get("master_link_status") == "up":
                replicas += 1
            else:
                return False
        return masters == replicas == len(self.nodes) // 2


def create(kind: str, state_dir: Path, logs: Path) -> RedisTopology:
    """A topology of ``kind`` on free ports, not started yet."""
    if kind not in KINDS:
        raise ClusterError(f"unknown Redis topology {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "single":
        node = RedisProcess(port=free_ports(1)[0], log=logs / "redis.log",
                            data_dir=state_dir / "redis-data")
        return RedisTopology(kind, {"redis": node}, state_dir)
    if kind == "cluster":
        return RedisTopology(kind, {f"redis-{i + 1}": _cluster_node(port, state_dir, logs, i)
                                    for i, port in enumerate(free_ports(6, cluster=True))},
                             state_dir)
    master, replica, *sentinels = free_ports(5)
    # Each its own folder: a replica writes the master's copy there (dump.rdb),
    # and a redis-server loads whatever dump.rdb its folder holds at start.
    data = state_dir / "redis-sentinel"
    nodes = {"redis-1": RedisProcess(port=master, log=logs / "redis-1.log",
                                     data_dir=data / "redis-1", args=SYNC_AT_ONCE),
             "redis-2": RedisProcess(port=replica, log=logs / "redis-2.log",
                                     data_dir=data / "redis-2",
                                     args=(*SYNC_AT_ONCE, "--replicaof", "127.0.0.1", str(master)))}
    for i, port in enumerate(sentinels, 1):
        nodes[f"sentinel-{i}"] = _sentinel(port, master, state_dir, logs, i)
    return RedisTopology(kind, nodes, state_dir)


def folders(state_dir: Path) -> list[Path]:
    """Where the topologies keep their files under ``state_dir``."""
    return [state_dir / name for name in ("redis-data", "redis-sentinel", "sentinel",
                                          "redis-cluster")]


def load(state: dict, state_dir: Path, logs: Path) -> RedisTopology:
    """The topology a state file recorded (PIDs already checked by the caller)."""
    nodes = {}
    for name, node in state["nodes"].items():
        nodes[name] = RedisProcess(
            port=node["port"], pid=node["pid"], log=logs / f"{name}.log",
            args=tuple(node.get("args", ())),
            data_dir=Path(node["data_dir"]) if node.get("data_dir") else None,
            config=Path(node["config"]) if node.get("config") else None)
    return RedisTopology(state["kind"], nodes, state_dir)


def _cluster_node(port: int, state_dir: Path, logs: Path, i: int) -> RedisProcess:
    folder = state_dir / "redis-cluster" / f"redis-{i + 1}"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh cluster every time
    return RedisProcess(port=port, log=logs / f"redis-{i + 1}.log", data_dir=folder, args=(
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS), *SYNC_AT_ONCE))


def _sentinel(port: int, master: int, state_dir: Path, logs: Path, i: int) -> RedisProcess:
    # A sentinel rewrites its config file as it learns the group: one each.
    config = state_dir / "sentinel" / f"sentinel-{i}.conf"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
                      f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                      f"sentinel failover-timeout {SERVICE} 10000\n")
    return RedisProcess(port=port, log=logs / f"sentinel-{i}.log", config=config,
                        args=("--sentinel",))


def free_ports(count: int, cluster: bool = False) -> list[int]:
    """``count`` distinct free ports below the ephemeral range; for cluster
    nodes their bus ports (+10000) free as well."""
    low, high = CLUSTER_PORTS if cluster else (20000, 32767)
    ports: list[int] = []
    for _ in range(2000):
        port = random.randint(low, high)
        wanted = (port, port + 10000) if cluster else (port,)
        if port not in ports and claim(*wanted):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise ClusterError(f"no {count} free ports found in {low}-{high}")


def command(port: int, *args: str):
    """One command to a local node, its reply (text), or None if it does not answer."""
    client = redis.Redis(port=port, socket_timeout=1.0, socket_connect_timeout=1.0,
                         decode_responses=True)
    try:
        return client.execute_command(*args)
    except redis.RedisError:
        return None
    finally:
        client.close()
