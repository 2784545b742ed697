"""chat-bench at rising rates, per topology: the numbers in docs/benchmarks.md.

``python -m chat.tools.sweep`` brings up each topology with ``chat.tools.cluster`` (one
replica in memory; 3 replicas + Redis + NGINX in each backplane mode), runs
``chat-bench`` against it at rising offered rates, and stops a topology's
climb once delivery drops below 100% or p99 passes 100 ms.  Results go to a
JSON file; ``--chart`` draws p99 latency against delivered messages/s from
that file (matplotlib, the ``bench`` extra) and ``--table`` prints the
markdown table.

``--topology node`` measures the comparison point the speed issue names,
Node's socket.io with its Redis adapter (``bench/node/server.js``), the
same way.

Two shapes of load (``--shape``):

``one-room``     C clients in one room through NGINX (every message goes to
                 every client), S senders sharing the offered rate;
``small-rooms``  5 replicas, 500 clients in 250 rooms of 2, each room's two
                 members on two neighbouring replicas (straight to the
                 replicas, ``chat-bench --spread 2``), one sender per room:
                 the shape of a real chat, where a replica has no business
                 with most rooms.

Besides latency, each point records the servers' CPU per delivery (replicas
and Redis, or Node's servers, over the measured window only:
``serverstats.py``) and, for the chat, the backplane messages each replica
took in per chat message sent.  Replicas run with the per-connection rate
limit lifted (MESSAGE_RATE), since the senders here are machines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import serverstats
from .benchrun import figure
from .cluster import ROOT, LocalCluster, free_port, spawn
from .idle import idle_cost

TOPOLOGIES = {
    "memory": {"replicas": 1, "mode": "memory"},
    "socketio": {"replicas": 3, "mode": "socketio"},
    "pubsub": {"replicas": 3, "mode": "pubsub"},
    # The comparison point, not the chat: bench/node/server.js (Node's
    # socket.io + Redis adapter), three processes behind the same NGINX.
    "node": {"replicas": 3, "mode": "socketio"},
}
NODE_SERVER = ROOT / "bench" / "node" / "server.js"
# Untracked: a quick sweep must not overwrite the figures the docs show.
DEFAULT_OUT = ROOT / "bench" / "results" / "benchmarks.json"
DEFAULT_RATES = (2000, 5000, 10000, 15000, 20000, 30000, 40000)  # deliveries/s
P99_LIMIT_MS = 100.0
# The senders are machines, and every client comes from this one address:
# lift the per-connection message rate and the per-address room limit.
BENCH_ENV = {"MESSAGE_RATE": "100000", "MESSAGE_BURST": "100000",
             "ROOMS_PER_MINUTE": "100000"}
SHAPES = {
    "one-room": {"rooms": 1, "spread": 0, "replicas": None, "direct": False},
    "small-rooms": {"clients": 500, "rooms": 250, "senders": 250, "spread": 2, "replicas": 5,
                    "direct": True},
}


def run_bench(urls: list[str], deliveries: int, clients: int, senders: int, duration: float,
              processes: int, rooms: int = 1, spread: int = 0) -> dict:
    per_sender = deliveries / (clients // rooms) / senders
    argv = [sys.executable, "-m", "chat.tools.bench", "--json",
            *(arg for url in urls for arg in ("--url", url)),
            "--clients", str(clients), "--senders", str(senders), "--rooms", str(rooms),
            "--spread", str(spread), "--rate", f"{per_sender:.3f}",
            "--duration", str(duration), "--warmup", "2", "--processes", str(processes)]
    # A session of its own, so that a timeout or Ctrl-C here also ends its workers.
    bench = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        out, err = bench.communicate(timeout=duration + 120)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.communicate()
    if bench.returncode != 0:
        raise RuntimeError(f"chat-bench failed: {err.strip()}")
    return json.loads(out)


def summarize(report: dict, cpu: serverstats.Sampler | None = None,
              backplane: serverstats.Sampler | None = None, replicas: int = 1) -> dict:
    """The few numbers a sweep keeps from one chat-bench report, with what
    the servers spent in its measured window."""
    latency = report["latency_ms"]
    spent = cpu.between(*report["measured_at"]) if cpu else None
    received = backplane.between(*report["measured_at"]) if backplane else None
    delivered = report["received"]
    return {
        "server_cpu_us_per_delivery": (round(spent / delivered * 1e6, 1)
                                       if spent is not None and delivered else None),
        "backplane_per_message_per_replica": (
            round(received / report["sent"] / replicas, 3)
            if received is not None and report["sent"] else None),
        "offered_deliveries": report["expected_per_s"],
        "delivered_per_s": report["delivered_per_s"],
        "delivery_ratio": report["delivery_ratio"],
        "p50_ms": latency["p50"], "p90_ms": latency["p90"],
        "p99_ms": latency["p99"], "max_ms": latency["max"],
        "generator_cpu_pct": round(report["cpu_measuring_pct"] or 0, 1),
        "replicas": report["replicas"],
    }


class NodeCluster(LocalCluster):
    """The local cluster with Node's socket.io in place of each replica.

    Installs its packages (``npm ci --prefix bench/node``) the first time."""

    def start_replica(self, replica) -> None:
        if not (NODE_SERVER.parent / "node_modules").is_dir():
            print("sweep: installing bench/node's packages (npm ci)", file=sys.stderr)
            subprocess.run(["npm", "ci", "--prefix", str(NODE_SERVER.parent), "--no-audit",
                            "--no-fund", "--loglevel=error"], check=True)
        env = {**self.replica_env(replica), "PORT": str(replica.port)}
        replica.pid = spawn(["node", str(NODE_SERVER)],
                            self.logs / f"{replica.server_id}.log", env)


def measured(cluster: LocalCluster, urls: list[str], rate: int, clients: int, senders: int,
             duration: float, processes: int, shape: dict) -> dict:
    """One chat-bench run, with the servers' CPU and backplane traffic."""
    replicas = [r.url for r in cluster.replicas]
    redis = cluster.topology.pids() if cluster.topology else []
    pids = [r.pid for r in cluster.replicas] + redis
    samplers = serverstats.cpu_sampler(pids), serverstats.received_sampler(replicas)
    for sampler in samplers:
        sampler.start()
    try:
        report = run_bench(urls, rate, clients, senders, duration, processes,
                           rooms=shape["rooms"], spread=shape["spread"])
    finally:
        for sampler in samplers:
            sampler.stop()
    return summarize(report, *samplers, replicas=len(replicas))


def sweep(topologies, rates, clients, senders, duration, processes, out: Path,
          shape_name: str = "one-room", redis: str = "single") -> list[dict]:
    results = json.loads(out.read_text()) if out.exists() else []
    shape = SHAPES[shape_name]
    clients, senders = shape.get("clients", clients), shape.get("senders", senders)
    for name in topologies:
        label = name if redis == "single" or name == "memory" else f"{name} ({redis})"
        results = [r for r in results
                   if (r["topology"], r.get("shape", "one-room")) != (label, shape_name)]
        topology = dict(TOPOLOGIES[name])
        if topology["mode"] != "memory":
            topology["redis"] = redis
        if shape["replicas"] and topology["mode"] != "memory":
            topology["replicas"] = shape["replicas"]
        with tempfile.TemporaryDirectory() as state:
            cluster = (NodeCluster if name == "node" else LocalCluster)(Path(state))
            try:
                cluster.up(port=free_port(), env=BENCH_ENV, **topology)
                urls = [r.url for r in cluster.replicas] if shape["direct"] else [cluster.url]
                for rate in rates:
                    point = measured(cluster, urls, rate, clients, senders, duration,
                                     processes, shape)
                    point.update(topology=label, target=rate, shape=shape_name)
                    results.append(point)
                    out.write_text(json.dumps(results, indent=1) + "\n")
                    ratio = point["delivery_ratio"] or 0.0
                    print(f"{name:9} {rate:>6}/s -> delivered {point['delivered_per_s']:>8.0f}/s "
                          f"({ratio:.2%}), p99 {point['p99_ms']} ms, server CPU "
                          f"{point['server_cpu_us_per_delivery']} us/delivery, "
                          f"generator CPU {point['generator_cpu_pct']}", flush=True)
                    if ratio < 1 or (point["p99_ms"] or 0) > P99_LIMIT_MS:
                        break
                    time.sleep(1)
            finally:
                cluster.down()
    return results


def table(results: list[dict]) -> str:
    lines = ["| shape | topology | offered deliveries/s | delivered/s | delivered | p50 ms "
             "| p90 ms | p99 ms | max ms | server CPU µs per delivery "
             "| backplane msgs per chat msg per replica | generator CPU % of a core |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(
            f"| {r.get('shape', 'one-room')} | {r['topology']} "
            f"| {figure(r['offered_deliveries'], ',.0f')} "
            f"| {figure(r['delivered_per_s'], ',.0f')} | {figure(r['delivery_ratio'], '.2%')} "
            f"| {figure(r['p50_ms'], '.1f')} | {figure(r['p90_ms'], '.1f')} "
            f"| {figure(r['p99_ms'], '.1f')} | {figure(r['max_ms'], '.1f')} "
            f"| {figure(r.get('server_cpu_us_per_delivery'), '.1f')} "
            f"| {figure(r.get('backplane_per_message_per_replica'), '.3f')} "
            f"| {r['generator_cpu_pct']} |")
    return "\n".join(lines)


def chart(results: list[dict], path: Path, baseline: list[dict] | None = None) -> None:
    """p99 against delivered messages/s, one line per topology; a baseline
    run, if given, is drawn dashed in the same colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:grey")
    for colour, name in zip(colours, TOPOLOGIES, strict=True):
        for runs, style, label in ((results, "-", name), (baseline or [], "--",
                                                           f"{name} (baseline)")):
            points = [r for r in runs if r["topology"] == name and r["p99_ms"] is not None
                      and r.get("shape", "one-room") == "one-room"]
            if points:
                ax.plot([p["delivered_per_s"] for p in points],
                        [p["p99_ms"] for p in points], style, color=colour, marker="o",
                        label=label)
    ax.axhline(P99_LIMIT_MS, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("delivered messages/s (all clients)")
    ax.set_ylabel("p99 end-to-end latency (ms)")
    ax.set_yscale("log")
    ax.set_title("chat-bench: 100 clients in one room")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chat.tools.sweep",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--topology", action="append", choices=list(TOPOLOGIES))
    parser.add_argument("--shape", choices=list(SHAPES), default="one-room",
                        help="the load: one room of --clients, or 250 rooms of 2 on 5 "
                             "replicas (default: %(default)s)")
    parser.add_argument("--redis", choices=("single", "sentinel", "cluster"), default="single",
                        help="the Redis the chat runs on (Node's adapter: single only); its "
                             "every node's CPU counts as the servers'")
    parser.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)),
                        help="offered deliveries/s, comma-separated")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="results file, extended by each run (default: %(default)s; "
                             "docs/benchmarks.json is the one the docs show)")
    parser.add_argument("--chart", type=Path, help="only draw the chart from --out")
    parser.add_argument("--baseline", type=Path,
                        help="with --chart: also draw this earlier results file, dashed")
    parser.add_argument("--table", action="store_true", help="only print the table from --out")
    parser.add_argument("--idle", type=int, metavar="N",
                        help="only measure the memory cost of N idle connections on one "
                             "server (--topology pubsub, the default, and/or node)")
    parser.add_argument("--one-room", action="store_true",
                        help="with --idle: every connection in one room (presence grows "
                             "with it), instead of a room each")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.chart:
        baseline = json.loads(args.baseline.read_text()) if args.baseline else None
        chart(json.loads(args.out.read_text()), args.chart, baseline)
        return 0
    if args.idle:
        for name in args.topology or ["pubsub"]:
            if name not in ("pubsub", "node"):
                parser.error("--idle measures --topology pubsub or node")
            cost = idle_cost(args.idle, one_room=args.one_room, env=BENCH_ENV,
                             cluster_class=NodeCluster if name == "node" else LocalCluster)
            print(json.dumps({"topology": name, **cost}), flush=True)
        return 0
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return 0
    rates = [int(r) for r in args.rates.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    topologies = args.topology or [t for t in TOPOLOGIES
                                   if args.shape == "one-room" or t != "memory"]
    if args.redis != "single" and "node" in topologies:
        parser.error("--redis: Node's Redis adapter runs on one Redis only")
    results = sweep(topologies, rates, args.clients, args.senders, args.duration,
                    args.processes, args.out, args.shape, args.redis)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
