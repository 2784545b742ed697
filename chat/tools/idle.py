"""Memory per idle connection: ``python -m chat.tools.sweep --idle N``.

One server process is started (a chat replica in pubsub mode, or, with
``--topology node``, Node's socket.io from ``bench/node``), 100 WebSockets
warm it up, then N more connect, each in a room of its own (or, with
``--one-room``, all in one room, where every arrival is news to everyone
already there).  The process's resident memory is read from
``/proc/<pid>/status`` before and after, the same way for both servers: the
growth divided by the connections is the cost of one idle client.

Every connection must be accepted: a refusal (a limit, say) stops the
measurement with the server's answer, rather than measuring fewer clients.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .cluster import LocalCluster, free_port


class Refused(RuntimeError):
    """The server did not accept an idle connection."""


def resident_bytes(pid: int) -> int:
    """The resident set (VmRSS) of the process and its descendants, in
    bytes: a replica is gunicorn's arbiter and its worker, Node one process."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) * 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += resident_bytes(int(child))
    return total


def idle_cost(connections: int, one_room: bool = False, cluster_class=LocalCluster,
              env: dict[str, str] | None = None, settle: float = 3.0) -> dict:
    """RSS growth per idle WebSocket connection on one server process.

    By default each connection joins a room of its own, so that join
    notices (sent to everyone in a room) do not turn the measurement into a
    broadcast test; ``one_room`` measures exactly that case.
    ``cluster_class`` is ``LocalCluster`` for the chat, or the sweep's
    ``NodeCluster`` for Node's socket.io.
    """
    import asyncio
    import json
    import resource

    import aiohttp

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, connections * 2 + 1000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))

    async def drain(ws):
        """Read and drop what the room sends (presence news): a client that
        never reads is cut off at MAX_QUEUED_BYTES, as it should be."""
        async for _ in ws:
            pass

    async def measure(url, pid):
        sockets, readers = [], []
        limit = asyncio.Semaphore(200)

        async def connect(i):
            room = "general" if one_room else f"r{i}"
            async with limit:
                ws = await session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
                await ws.receive(timeout=10)  # Engine.IO's open
                await ws.send_str("40" + json.dumps({"name": f"idle{i}", "room": room}))
                for _ in range(100):  # room news may come before the answer
                    answer = (await ws.receive(timeout=10)).data
                    if not isinstance(answer, str) or answer[:2] in ("40", "44"):
                        break
                if not (isinstance(answer, str) and answer.startswith("40")):
                    await ws.close()
                    raise Refused(f"connection {i} refused: {str(answer)[:200]}")
                sockets.append(ws)
                readers.append(asyncio.ensure_future(drain(ws)))

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(connect(i) for i in range(100)))  # warm up
            await asyncio.sleep(settle)
            rss0 = resident_bytes(pid)
            await asyncio.gather(*(connect(i) for i in range(100, 100 + connections)))
            await asyncio.sleep(settle)
            rss1 = resident_bytes(pid)
            for ws in sockets:
                await ws.close()
            await asyncio.gather(*readers, return_exceptions=True)
        return {"connections": connections, "one_room": one_room,
                "rss_before_mib": round(rss0 / 2**20, 1),
                "rss_after_mib": round(rss1 / 2**20, 1),
                "kib_per_connection": round((rss1 - rss0) / connections / 1024, 1)}

    mode = "socketio" if cluster_class is not LocalCluster else "pubsub"
    with tempfile.TemporaryDirectory() as state:
        cluster = cluster_class(Path(state))
        try:
            cluster.up(replicas=1, mode=mode, port=free_port(), proxy=False, env=env)
            replica = cluster.replicas[0]
            return asyncio.run(measure(replica.url, replica.pid))
        finally:
            cluster.down()
