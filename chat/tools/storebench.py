"""What storing a message costs on each Redis topology (docs/scaling.md).

Starts a topology of its own (``redis_topology.py``, in a temporary folder,
stopped by PID at the end), then appends messages through the replicas' own
code (``RedisHistory.append``: the numbering script, and WAIT when asked)
from ``--concurrency`` tasks spread over ``--rooms`` rooms, and prints one
line: messages/s, append latency percentiles, and the Redis servers' CPU per
message (user + system time of the data nodes from /proc, sentinels left
out).  Only the store is measured: no replica, no backplane, no clients::

    python -m chat.tools.storebench --redis single --no-aof --wait 0
    python -m chat.tools.storebench --redis sentinel --wait 1 --concurrency 16

``--ceiling`` measures Redis rather than the client: the same script, with
the PUBLISH of pubsub mode, driven by ``redis-benchmark`` (C, 50
connections, 16 commands per round trip) on the single Redis, so that the
one Python client is not what limits the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from ..history import APPEND, HistoryNotReplicated, RedisHistory
from ..redis_clients import redis_client
from ..redis_keys import RedisKeys
from . import redis_topology
from .processes import find_binary

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


async def measure(url: str, pids: list[int], args) -> dict:
    client = redis_client(url, "chat:storebench", max(args.concurrency, 2))
    history = RedisHistory(client, keys=RedisKeys("bench"), length=1000,
                           wait_replicas=args.wait)
    latencies: list[float] = []
    unconfirmed = 0
    per_task = args.messages // args.concurrency

    async def sender(task: int) -> None:
        nonlocal unconfirmed
        for i in range(per_task):
            room = f"room-{(task * per_task + i) % args.rooms}"
            started = time.perf_counter()
            try:
                await history.append(room, {"id": f"{task}-{i}", "name": "bench",
                                            "text": "x" * args.size})
            except HistoryNotReplicated:
                unconfirmed += 1
            latencies.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(sender(t) for t in range(min(args.concurrency, 4))))  # warm up
        latencies.clear()
        cpu, wall = cpu_seconds(pids), time.perf_counter()
        await asyncio.gather(*(sender(t) for t in range(args.concurrency)))
        wall, cpu = time.perf_counter() - wall, cpu_seconds(pids) - cpu
    finally:
        await client.aclose()
    latencies.sort()
    count = len(latencies)
    return {"messages": count, "per_second": count / wall,
            "p50_ms": latencies[count // 2] * 1000, "p99_ms": latencies[int(count * 0.99)] * 1000,
            "redis_cpu_us": cpu / count * 1e6, "unconfirmed": unconfirmed}


def ceiling(node, pids: list[int], args) -> dict:
    """Appends and publishes per second that one Redis takes, pipelined,
    with its CPU and its own time (``INFO commandstats``) per message."""
    cli = [find_binary("redis-cli"), "-p", str(node.port)]
    sha = subprocess.run([*cli, "SCRIPT", "LOAD", APPEND], check=True, capture_output=True,
                         text=True).stdout.strip()
    subprocess.run([*cli, "CONFIG", "RESETSTAT"], check=True, capture_output=True)
    keys = RedisKeys("bench")
    message = json.dumps({"id": "x", "room": "r", "name": "ana", "text": "t" * args.size})
    before = cpu_seconds(pids)
    out = subprocess.run(
        [find_binary("redis-benchmark"), "-p", str(node.port), "-q", "-n", str(args.messages),
         "-c", "50", "-P", "16", "-r", "1000000000", "EVALSHA", sha, "3", keys.room_meta("r"),
         keys.room_log("r"), keys.room_ids("r"), "epoch", "1000", message, "86400000",
         "__rand_int__", keys.room_channel("r"), "host", "PUBLISH"],
        check=True, capture_output=True, text=True).stdout
    cpu = cpu_seconds(pids) - before
    stats = subprocess.run([*cli, "INFO", "commandstats"], check=True, capture_output=True,
                           text=True).stdout
    per_second = float(re.findall(r"([\d.]+) requests per second", out)[-1])
    own = float(re.search(r"cmdstat_evalsha:.*?usec_per_call=([\d.]+)", stats).group(1))
    return {"per_second": per_second, "redis_cpu_us": cpu / args.messages * 1e6,
            "redis_time_us": own}


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="storebench-") as folder:
        topology = redis_topology.create(args.redis, Path(folder), Path(folder) / "logs")
        if args.no_aof:
            for node in topology.nodes.values():
                node.data_dir = None if not node.args else node.data_dir
        topology.start()
        try:
            pids = [n.pid for name, n in topology.nodes.items() if name.startswith("redis")]
            if args.ceiling:
                return ceiling(next(iter(topology.nodes.values())), pids, args)
            return asyncio.run(measure(topology.url, pids, args))
        finally:
            topology.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chat.tools.storebench",
                                     description="Time message appends on a Redis topology.")
    parser.add_argument("--redis", choices=redis_topology.KINDS, default="single")
    parser.add_argument("--no-aof", action="store_true",
                        help="the single Redis without its append-only file")
    parser.add_argument("--wait", type=int, default=0, help="REDIS_WAIT_REPLICAS")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=1, help="appends in flight")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--size", type=int, default=100, help="characters per message")
    parser.add_argument("--ceiling", action="store_true",
                        help="drive the script with redis-benchmark instead (--redis single)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ceiling and args.redis != "single":
        parser.error("--ceiling measures the single Redis")
    result = run(args)
    if args.ceiling:
        print(f"single{' no-aof' if args.no_aof else ''} ceiling: "
              f"{result['per_second']:,.0f} messages/s (append script + PUBLISH, pipelined), "
              f"Redis CPU {result['redis_cpu_us']:.1f} us/message, of which the script "
              f"{result['redis_time_us']:.1f} us")
        return 0
    print(f"{args.redis}{' no-aof' if args.no_aof else ''} wait={args.wait} "
          f"concurrency={args.concurrency}: {result['per_second']:,.0f} messages/s, "
          f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
          f"Redis CPU {result['redis_cpu_us']:.1f} us/message"
          + (f", {result['unconfirmed']} not confirmed by a replica" if args.wait else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
