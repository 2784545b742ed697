"""Mass churn: what a replica pays when a dead replica's clients land on it.

``python -m chat.tools.churn --clients 5000 --rooms 2000`` starts two
replicas in pubsub mode (and their Redis), connects every client to the
second one, each in one of the rooms, then SIGKILLs it.  Each client comes
back on the survivor after 0.5-1.5 s, like socket.io's clients (a 1 s
reconnection delay, randomized by half).  The survivor had nobody in those
rooms, so it must subscribe every room's channel: the worst case.

Printed as JSON:

* ``back_s``: from the kill until every client has its welcome again;
* ``subscribed_s``: until the survivor hears every room
  (``chat_backplane_channels``), and how many SUBSCRIBE commands that took
  on Redis (``INFO commandstats``: channels are batched per command);
* ``survivor_cpu_s``: the survivor's CPU over that time;
* ``healthz_ms``: the survivor's ``/healthz`` answered every 20 ms all along
  (p50, p99, max): whether it kept answering;
* the same for everyone leaving: ``unsubscribed_s`` and UNSUBSCRIBE commands;
* ``handshakes_tried_again``: connections the replicas dropped during a
  handshake, which the client (like socket.io's) tried again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import signal
import tempfile
import time
from pathlib import Path

import aiohttp
import redis

from . import serverstats
from .cluster import LocalCluster, free_port
from .session import ClientError
from .sweep import BENCH_ENV
from .wire import LeanSession

PROBE_EVERY = 0.02
OPEN_WITHIN = 180  # seconds a connection may wait: 5,000 arrive at once
OPEN_ATTEMPTS = 5


class Returning(LeanSession):
    """A listener that notes when its connection is lost."""

    def __init__(self, *args, lost: asyncio.Queue, **kwargs):
        super().__init__(*args, **kwargs)
        self.lost = lost

    def on_lost(self, reason: str) -> None:
        self.lost.put_nowait(self)


def command_calls(url: str, command: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))


async def until_metric(http, url: str, name: str, value: float, timeout: float) -> float:
    started = time.monotonic()
    while await metric(http, url, name) != value:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{name} did not reach {value} within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic()


async def probe(http, url: str, stop: asyncio.Event, seen: list[float]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        async with http.get(f"{url}/healthz") as response:
            await response.read()
        seen.append((time.monotonic() - started) * 1000)
        await asyncio.sleep(PROBE_EVERY)


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1], 1),
            "samples": len(ordered)}


async def churn(cluster: LocalCluster, clients: int, rooms: int) -> dict:
    survivor, victim = cluster.replicas
    lost: asyncio.Queue = asyncio.Queue()
    limit = asyncio.Semaphore(200)
    retried = [0]  # handshakes tried again
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def open_on(url: str, i: int, person: str | None = None) -> Returning:
            # Like a real client: a refused or broken handshake is tried again.
            for attempt in range(OPEN_ATTEMPTS):
                session = Returning(url, f"u{i}", f"r{i % rooms}", http, lost=lost)
                if person is not None:  # the same person again (open mode: its name is its)
                    session.person_key = person
                try:
                    async with limit:
                        await session.open(OPEN_WITHIN)
                    return session
                except ClientError:
                    await session.close()
                    if attempt == OPEN_ATTEMPTS - 1:
                        raise
                    retried[0] += 1
                    await asyncio.sleep(random.uniform(0.5, 1.5))
            raise AssertionError("unreachable")

        sessions = await asyncio.gather(*(open_on(victim.url, i) for i in range(clients)))
        channels = await metric(http, survivor.url, "chat_backplane_channels")
        subscribes = command_calls(cluster.redis_url, "subscribe")
        cpu0 = serverstats.tree_cpu([survivor.pid])
        stop, probes = asyncio.Event(), []
        prober = asyncio.ensure_future(probe(http, survivor.url, stop, probes))
        await asyncio.sleep(0.5)

        killed = time.monotonic()
        cluster.kill_replica(victim.server_id, signal.SIGKILL)

        async def come_back(old: Returning) -> Returning:
            await asyncio.sleep(random.uniform(0.5, 1.5))
            return await open_on(survivor.url, int(old.name[1:]), old.person_key)

        returning = []
        for _ in range(clients):
            returning.append(asyncio.ensure_future(come_back(await lost.get())))
        back = await asyncio.gather(*returning)
        back_at = time.monotonic()
        heard_at = await until_metric(http, survivor.url, "chat_backplane_channels",
                                      channels + rooms, 60)
        cpu1 = serverstats.tree_cpu([survivor.pid])
        subscribed = command_calls(cluster.redis_url, "subscribe") - subscribes

        unsubscribes = command_calls(cluster.redis_url, "unsubscribe")
        leaving = time.monotonic()
        await asyncio.gather(*(session.close() for session in back))
        left_at = await until_metric(http, survivor.url, "chat_backplane_channels",
                                     channels, 60)
        stop.set()
        await prober
        for session in sessions:
            await session.close()
        return {
            "clients": clients, "rooms": rooms,
            "back_s": round(back_at - killed, 2),
            "subscribed_s": round(heard_at - killed, 2),
            "subscribe_commands": subscribed,
            "survivor_cpu_s": round(cpu1 - cpu0, 2),
            "unsubscribed_s": round(left_at - leaving, 2),
            "unsubscribe_commands": command_calls(cluster.redis_url, "unsubscribe")
            - unsubscribes,
            "healthz_ms": percentiles(probes),
            "handshakes_tried_again": retried[0],
        }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chat.tools.churn",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rooms", type=int, default=2000)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.clients * 3)), hard))
    with tempfile.TemporaryDirectory() as state:
        cluster = LocalCluster(Path(state))
        try:
            cluster.up(replicas=2, mode="pubsub", port=free_port(), proxy=False, env=BENCH_ENV)
            print(json.dumps(asyncio.run(churn(cluster, args.clients, args.rooms))))
        finally:
            cluster.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
