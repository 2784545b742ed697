"""Just enough Engine.IO v4 / Socket.IO v5, by hand, for a client that only listens.

chat-bench's receivers outnumber its senders, and every delivery that goes
through python-socketio's client (Engine.IO decoding, Socket.IO decoding
with a full JSON parse, event dispatch) costs the generator CPU that the
server under test then lacks.  :class:`LeanSession` speaks the few frames a
listener needs over one aiohttp WebSocket and leaves ``message`` payloads as
raw text, for the caller to search (:class:`chat.tools.load.StampFinder`).

One WebSocket text frame carries one Engine.IO packet: its first character
is the Engine.IO type, and for type ``4`` (message) the next one is the
Socket.IO type.  Only the default namespace ``/`` is used, so no namespace
follows.  The frames, in the order a session meets them::

    client -> server  GET /socket.io/?EIO=4&transport=websocket&sticky=KEY (upgrade)
    server -> client  0{"sid":...,"pingInterval":25000,...}   Engine.IO open
    client -> server  40{"name":...,"room":...}              Socket.IO connect, with auth
    server -> client  42["welcome",{"server":...,...}]        the chat's welcome event
    server -> client  40{"sid":...}                           connected (comes after the
                                                              welcome with python-socketio;
                                                              either order is accepted)
                  or  44{"message":...}                       connect refused, and why
    server -> client  42["message",{...,"text":...,...}]      a chat message (kept raw)
                      42["presence",{...}], 42["typing",{...}] other events (ignored)
    server -> client  2                                       Engine.IO ping ...
    client -> server  3                                       ... answered with a pong at once
    server -> client  41 or 1, or the socket closes           the session has ended
    client -> server  41, then a WebSocket close              leaving
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from urllib.parse import urlsplit

import aiohttp

from .session import CLOSE_TIMEOUT, ClientError, Unreachable, diagnose, refusal_reason

# What :func:`parse_frame` says a frame is.
OPEN = "open"            # data: the Engine.IO handshake (a dict)
PING = "ping"            # data: text to echo in the pong ("" for a plain ping)
CONNECTED = "connected"  # the Socket.IO connect succeeded
REFUSED = "refused"      # data: the server's reason, one sentence
WELCOME = "welcome"      # data: the welcome payload (a dict)
MESSAGE = "message"      # data: the whole frame, unparsed
CLOSED = "closed"        # the server ended the session
OTHER = "other"          # anything else: ignored

MESSAGE_FRAME = '42["message",'
WELCOME_FRAME = '42["welcome",'
DISCONNECT_FRAME = "41"
# A WebSocket that ended, whichever way.
_ENDED = frozenset({aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR})


def websocket_url(url: str, key: str) -> str:
    """The Engine.IO WebSocket URL for the chat at ``url`` (its path is
    dropped, as python-socketio does), with ``sticky=<key>`` for NGINX."""
    parts = urlsplit(url)
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    query = f"{parts.query}&" if parts.query else ""
    return (f"{scheme}://{parts.netloc}/socket.io/?{query}"
            f"EIO=4&transport=websocket&sticky={key}")


def connect_frame(name: str, room: str, key: str | None = None) -> str:
    """The Socket.IO connect packet carrying the chat's auth (``key``: open
    mode's person, the same across a session's reconnections)."""
    auth = {"name": name, "room": room, **({"key": key} if key else {})}
    return "40" + json.dumps(auth, separators=(",", ":"))


def pong_frame(data: str = "") -> str:
    return "3" + data


def _json(text: str):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def parse_frame(frame: str) -> tuple[str, object]:
    """``(kind, data)`` for one frame from the server (kinds above).

    Only ``welcome``, the open packet and a refusal are parsed as JSON; a
    ``message`` comes back as the raw frame."""
    if frame.startswith(MESSAGE_FRAME):
        return MESSAGE, frame
    if frame.startswith("42"):
        if frame.startswith(WELCOME_FRAME):
            event = _json(frame[2:])
            payload = event[1] if isinstance(event, list) and len(event) > 1 else None
            return WELCOME, payload if isinstance(payload, dict) else {}
        return OTHER, None
    if frame.startswith("2"):
        return PING, frame[1:]
    if frame.startswith("40"):
        return CONNECTED, None
    if frame.startswith("44"):
        return REFUSED, refusal_reason(_json(frame[2:]))
    if frame.startswith(("41", "1")):
        return CLOSED, None
    if frame.startswith("0"):
        handshake = _json(frame[1:])
        return OPEN, handshake if isinstance(handshake, dict) else {}
    return OTHER, None


class LeanSession:
    """A listen-only chat session over one WebSocket, speaking the frames in
    the module docstring.  Like :class:`chat.tools.session.Session` it sends the
    name and room as auth, notes the replica named by ``welcome`` and turns
    a failure into one sentence; it neither sends messages nor reconnects.

    Subclasses override :meth:`on_welcome`, :meth:`on_lost` and
    :meth:`on_message_frame` (called for each ``message`` with the raw frame
    and ``time.time_ns()`` taken as it arrived).
    """

    def __init__(self, url: str, name: str, room: str, http: aiohttp.ClientSession):
        self.url = url
        self.name = name
        self.room = room
        self.http = http
        self.key = secrets.token_hex(8)
        self.person_key = secrets.token_hex(16)
        self.server: str | None = None
        self.closing = False
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._connected = False  # the server's 40 arrived
        self._welcomed = False
        self._ready: asyncio.Future | None = None
        self._reader: asyncio.Task | None = None

    def on_welcome(self, previous: str | None) -> None:
        """After the ``welcome``; ``previous`` is always None (no reconnection)."""

    def on_lost(self, reason: str) -> None:
        """The connection ended, and not because of :meth:`close`."""

    def on_message_frame(self, frame: str, now_ns: int) -> None:
        """A ``message`` event of the room, as the raw frame."""

    async def open(self, timeout: float | None = None, *, explain: bool = True) -> None:
        """Connect and wait for both the welcome and the connect packet;
        raise ClientError saying why not (:class:`Unreachable` without
        ``explain`` when the handshake failed, as Session does)."""
        self._ready = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                try:
                    self.ws = await self.http.ws_connect(websocket_url(self.url, self.key),
                                                         compress=0)
                except (aiohttp.ClientError, OSError):
                    reason = self.url if not explain else await diagnose(self.http, self.url)
                    raise Unreachable(reason) from None
                self._reader = asyncio.ensure_future(self._read(self.ws))
                await self._ready
        except TimeoutError:
            raise ClientError(f"no answer from {self.url} within {timeout:g} s") from None

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        reason = "connection closed"
        try:
            while True:
                msg = await ws.receive()
                now_ns = time.time_ns()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    if msg.type in _ENDED:
                        break
                    continue
                frame = msg.data
                if frame.startswith(MESSAGE_FRAME):  # the hot path: no parsing here
                    self.on_message_frame(frame, now_ns)
                    continue
                kind, data = parse_frame(frame)
                if kind == PING:
                    await self._send(pong_frame(data))
                elif kind == OPEN:
                    await self._send(connect_frame(self.name, self.room, self.person_key))
                elif kind == WELCOME:
                    self.server = str(data.get("server", "?"))
                    self.room = data.get("room", self.room)
                    self._welcomed = True
                    self.on_welcome(None)
                    self._check_ready()
                elif kind == CONNECTED:
                    self._connected = True
                    self._check_ready()
                elif kind == REFUSED:
                    self._fail(ClientError(f"{self.url} refused the connection: {data}"))
                    return
                elif kind == CLOSED:
                    reason = "server disconnect"
                    break
        except BaseException as exc:
            self._fail(exc if isinstance(exc, Exception) else Unreachable(self.url))
            raise
        self._fail(Unreachable(self.url))  # ended before the handshake finished
        if self._connected and not self.closing:
            self._connected = False
            self.on_lost(reason)

    def _check_ready(self) -> None:
        if self._connected and self._welcomed and not self._ready.done():
            self._ready.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)

    async def _send(self, frame: str) -> None:
        # A socket that is going away says so to the next receive().
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await self.ws.send_str(frame)

    async def close(self) -> None:
        """Leave politely (41, then a WebSocket close); re-raise a failure
        of the reading task, which would otherwise go unnoticed."""
        self.closing = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    if not self.ws.closed:
                        await self._send(DISCONNECT_FRAME)
                    await self.ws.close()
        try:
            if self._reader is not None:
                if not self._reader.done():
                    self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, ClientError):
                    await self._reader
        finally:
            if self._ready is not None and self._ready.done() and not self._ready.cancelled():
                self._ready.exception()  # mark it retrieved: open() reported it already
