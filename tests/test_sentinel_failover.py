"""A Sentinel failover under load, in both backplane modes.

Two replica processes run on a Sentinel group (``redis_topology.py``: a
master, one replica, three sentinels; a master silent for 1 s is down).  A
sender keeps a room busy through replica-1, a reader on each replica records
what came off the wire, and the master is SIGKILLed.  Then, as an
orchestrator would, the dead node is started again (the sentinels make it
the new master's replica, so WAIT can count a copy again).

What must hold: no replica process dies; each says not-ready while there is
no master and ready again by itself; every message acked ``ok`` (WAIT 1: on
two Redis servers) reaches every reader, numbers contiguous.  The timeline
(promotion, first ok ack, readiness back) is printed, not asserted
(docs/scaling.md has the figures): pubsub mode resubscribes within half a
second of the promotion; socketio mode waits for the library's listener,
which retries after 1, 2, 4 ... s.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from wire import check_wire, contiguous, keep_sending

from chat.tools.processes import alive

pytestmark = pytest.mark.slow


def roles(cluster) -> dict[str, str]:
    return {name: role for name, _, _, role in cluster.status()
            if name.startswith(("redis", "sentinel"))}


async def readiness(url: str, http: aiohttp.ClientSession) -> bool:
    try:
        async with http.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=1)) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def test_a_sentinel_failover_loses_no_acked_message(cluster_factory, connect, readers,
                                                         mode):
    cluster = cluster_factory(replicas=2, mode=mode, proxy=False, redis="sentinel")
    redis = cluster.topology
    room = "failover"
    audience = [await readers(r.url, f"{r.server_id}-reader", room) for r in cluster.replicas]
    sender = await connect(cluster.replicas[0].url, "sender", room=room)
    acks: list[tuple[float, dict]] = []
    not_ready: dict[str, list[float]] = {r.server_id: [] for r in cluster.replicas}
    stop = asyncio.Event()


    async def watch(http):
        while not stop.is_set():
            for replica in cluster.replicas:
                if not await readiness(replica.url, http):
                    not_ready[replica.server_id].append(time.monotonic())
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession() as http:
        tasks = [asyncio.ensure_future(keep_sending(sender, "failover", acks, stop)),
                 asyncio.ensure_future(watch(http))]
        await asyncio.sleep(1.0)
        old = redis.master()
        assert roles(cluster) == {"redis-1": "master", "redis-2": "replica",
                                  **{f"sentinel-{i}": "sentinel" for i in (1, 2, 3)}}
        killed_at = time.monotonic()
        redis.kill(old)
        while redis.master() in (old, None):
            assert time.monotonic() - killed_at < 30, "no promotion within 30 s"
            await asyncio.sleep(0.05)
        promoted = time.monotonic() - killed_at
        redis.restart(old)  # back as the new master's replica
        deadline = time.monotonic() + 60
        while not (acks and acks[-1][1].get("ok") and acks[-1][0] > killed_at + promoted
                   and all([await readiness(r.url, http) for r in cluster.replicas])):
            assert time.monotonic() < deadline, f"not recovered: last ack {acks[-1][1]}"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)

    ok = [ack["seq"] for _, ack in acks if ack.get("ok")]
    refused = [ack["error"][:40] for _, ack in acks if not ack.get("ok")]
    first_ok = min(t for t, ack in acks if ack.get("ok") and t > killed_at) - killed_at
    back = {name: max(times) - killed_at for name, times in not_ready.items() if times}
    print(f"\n{mode}: promoted after {promoted:.2f} s, first ok ack after {first_ok:.2f} s, "
          f"ready again after {', '.join(f'{k} {v:.2f} s' for k, v in back.items())}; "
          f"{len(ok)} acked ok, refused {len(refused)}: {sorted(set(refused))}")
    # make ps (chat-cluster ps) shows the roles as they are now: the master
    # the sentinels name, the other node its replica.  Usually swapped; on a
    # loaded machine a sentinel that misses the new master for its 1 s
    # down-after can fail over once more (seen in CI), so the truth is asked;
    # the master it left is demoted at the sentinels' next look at it (their
    # INFO every 10 s), so ps may show two masters until then.
    def shown() -> tuple[dict, str | None]:
        return ({n: r for n, r in roles(cluster).items() if n.startswith("redis")},
                redis.master())

    deadline = time.monotonic() + 30
    while (now := shown())[1] is None or now[0] != {
            n: "master" if n == now[1] else "replica" for n in ("redis-1", "redis-2")}:
        assert time.monotonic() < deadline, f"make ps shows {now[0]}, sentinels say {now[1]}"
        await asyncio.sleep(0.1)
    for replica in cluster.replicas:
        assert alive(replica.pid), f"{replica.server_id} died"
        assert not_ready[replica.server_id], f"{replica.server_id} never said not ready"
    for reader in audience:
        await reader.until(lambda reader=reader: reader.seqs and reader.seqs[-1] >= max(ok),
                           timeout=15)
        assert contiguous(reader.seqs), f"{reader.name}: hole or repeat"
    check_wire(audience, ok)
