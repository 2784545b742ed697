"""Raw Engine.IO clients that do what a well-behaved client never would, and
a replica's memory and log lines measured around an attack (the transport
tests of the hostile group: test_hostile_transport.py, test_hostile_limits.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import urllib.request

import aiohttp

WS_PATH = "/socket.io/?EIO=4&transport=websocket"
POLL_PATH = "/socket.io/?EIO=4&transport=polling"


def rss_mib(url: str) -> float:
    """The replica worker's resident memory, from its /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1]) / 2**20
    raise AssertionError("no process_resident_memory_bytes in /metrics")


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
        return json.loads(response.read())


class Watch:
    """The replica's RSS and log lines, before and after an attack."""

    def __init__(self, cluster, replica):
        self.url = replica.url
        self.log = cluster.logs / f"{replica.server_id}.log"
        self.rss_before = rss_mib(self.url)
        self.lines_before = len(self.log.read_text().splitlines())
        self.peak = self.rss_before

    def sample(self) -> None:
        self.peak = max(self.peak, rss_mib(self.url))

    def new_lines(self) -> list[str]:
        return self.log.read_text().splitlines()[self.lines_before:]

    def report(self, what: str) -> dict:
        self.sample()
        lines = self.new_lines()
        figures = {"rss_growth_mib": round(self.peak - self.rss_before, 1),
                   "log_lines": len(lines),
                   "tracebacks": sum("Traceback" in line for line in lines)}
        print(f"\n[hostile] {what}: {figures}")
        return figures


async def ws_session(session: aiohttp.ClientSession, url: str, name: str = "mallory",
                     headers: dict | None = None, auth: str | None = None):
    """An open WebSocket after the Socket.IO connect (and its welcome)."""
    ws = await session.ws_connect(url + WS_PATH, headers=headers, max_msg_size=0)
    await ws.receive(timeout=5)  # Engine.IO open
    await ws.send_str("40" + (auth if auth is not None else json.dumps({"name": name})))
    return ws


async def closed_within(ws, timeout: float) -> bool:
    """Whether the server closes ``ws`` within ``timeout`` s (frames read
    meanwhile are discarded)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await ws.receive(timeout=left)
        except TimeoutError:
            return False
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
            return True
    return False


async def poll_session(session: aiohttp.ClientSession, url: str, name: str = "mallory"):
    """A connected long-polling session: returns its Engine.IO sid."""
    async with session.get(url + POLL_PATH) as response:
        sid = json.loads((await response.text())[1:])["sid"]
    async with session.post(f"{url}{POLL_PATH}&sid={sid}",
                            data="40" + json.dumps({"name": name})) as response:
        assert response.status == 200
    async with session.get(f"{url}{POLL_PATH}&sid={sid}") as response:
        await response.read()  # the Socket.IO connect (and maybe the welcome)
    return sid


async def post(session, url: str, sid: str, body: bytes | str) -> int:
    async with session.post(f"{url}{POLL_PATH}&sid={sid}", data=body) as response:
        await response.read()
        return response.status


class RawWebSocket:
    """A WebSocket client on a plain socket with a tiny receive buffer, that
    reads nothing unless asked: the client that stops reading."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {WS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())

    def send_text(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        size = len(data)
        if size < 126:
            header = bytes((0x81, 0x80 | size))
        elif size < 1 << 16:
            header = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def closed_by_server(self, timeout: float) -> bool:
        """Read everything that waits; whether the connection ends within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(1 << 20):
                pass
        except TimeoutError:
            return False
        except OSError:  # reset: the server aborted the connection
            return True
        return True

    def server_closed(self, server_port: int) -> bool:
        """Whether the server's end of this connection has left ESTABLISHED
        (read from /proc/net/tcp, so without reading from the socket)."""
        client_port = self.sock.getsockname()[1]
        local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
        with open("/proc/net/tcp") as table:
            for row in table.read().splitlines()[1:]:
                fields = row.split()
                if fields[1] == local and fields[2] == remote:
                    return fields[3] != "01"  # 01: ESTABLISHED
        return True  # gone altogether

    def close(self) -> None:
        self.sock.close()


async def until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.1)
    return check()
