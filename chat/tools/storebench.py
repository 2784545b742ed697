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
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from ..history import HistoryNotReplicated, RedisHistory
from ..redis_clients import redis_client
from ..redis_keys import RedisKeys
from . import redis_topology

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


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="storebench-") as folder:
        topology = redis_topology.create(args.redis, Path(folder), Path(folder) / "logs")
        if args.no_aof:
            for node in topology.nodes.values():
                node.data_dir = None if not node.args else node.data_dir
        topology.start()
        try:
            pids = [n.pid for name, n in topology.nodes.items() if name.startswith("redis")]
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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    print(f"{args.redis}{' no-aof' if args.no_aof else ''} wait={args.wait} "
          f"concurrency={args.concurrency}: {result['per_second']:,.0f} messages/s, "
          f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
          f"Redis CPU {result['redis_cpu_us']:.1f} us/message"
          + (f", {result['unconfirmed']} not confirmed by a replica" if args.wait else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
