"""Memory per idle connection: ``python -m chat.tools.sweep --idle N``.

One replica (pubsub mode) is started, 100 WebSockets warm it up, then N
more connect, each in a room of its own (or, with ``--one-room``, all in one
room, where every arrival is news to everyone already there), and the
replica's resident memory (its ``/metrics``) is read before and after: the
growth divided by the connections is the cost of one idle client.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .cluster import LocalCluster, free_port


def idle_cost(connections: int, one_room: bool = False) -> dict:
    """RSS growth per idle WebSocket connection on one replica (pubsub mode).

    By default each connection joins a room of its own, so that join
    notices (sent to everyone in a room) do not turn the measurement into a
    broadcast test; ``one_room`` measures exactly that case.
    """
    import asyncio
    import resource

    import aiohttp

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, connections * 2 + 1000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))

    async def sample(session, url):
        async with session.get(f"{url}/metrics") as response:
            lines = (await response.text()).splitlines()
        values = dict(line.rsplit(" ", 1) for line in lines if line and line[0] != "#")
        clients = next(v for k, v in values.items() if k.startswith("chat_connected_clients"))
        return float(values["process_resident_memory_bytes"]), float(clients)

    async def drain(ws):
        """Read and drop what the room sends (presence news): a client that
        never reads is cut off at MAX_QUEUED_BYTES, as it should be."""
        async for _ in ws:
            pass

    async def measure(url):
        sockets, readers = [], []
        limit = asyncio.Semaphore(200)

        async def connect(i):
            room = "general" if one_room else f"r{i}"
            async with limit:
                ws = await session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
                await ws.receive()  # open
                await ws.send_str("40" + json.dumps({"name": f"idle{i}", "room": room}))
                await ws.receive()  # welcome and connect, in either order
                await ws.receive()
                sockets.append(ws)
                readers.append(asyncio.ensure_future(drain(ws)))

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(connect(i) for i in range(100)))  # warm up
            await asyncio.sleep(2)
            rss0, n0 = await sample(session, url)
            await asyncio.gather(*(connect(i) for i in range(100, 100 + connections)))
            await asyncio.sleep(3)
            rss1, n1 = await sample(session, url)
            for ws in sockets:
                await ws.close()
            await asyncio.gather(*readers, return_exceptions=True)
        return {"connections": int(n1 - n0), "rss_before_mib": round(rss0 / 2**20, 1),
                "rss_after_mib": round(rss1 / 2**20, 1),
                "kib_per_connection": round((rss1 - rss0) / (n1 - n0) / 1024, 1)}

    with tempfile.TemporaryDirectory() as state:
        cluster = LocalCluster(Path(state))
        try:
            cluster.up(replicas=1, mode="pubsub", port=free_port(), proxy=False)
            return asyncio.run(measure(cluster.replicas[0].url))
        finally:
            cluster.down()
