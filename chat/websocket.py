"""The WebSocket side of a replica: frames written straight to the TCP
transport when that keeps the order, and no compression.

Engine.IO hands every outgoing packet to the connection's queue, where a
writer task wakes up, frames it and writes it.  For a chat that costs a
task wake-up, a timer and a framing per packet per recipient.  A server's
frames are not masked, so a frame built once fits every recipient, and a
connection whose writer is idle can take it at once:

* room broadcasts (``chat/backplane/base.py``, ``Observed._write_packet``)
  build one frame and :meth:`UncompressedWebSocket.write` it to each idle
  member;
* packets for one connection, such as the ack of each chat message
  (``ChatServer._send_packet`` in ``chat/server.py``), go through
  :func:`write_now`.

Whatever cannot be written at once without overtaking something (the
writer is busy or has packets waiting, the upgrade is not done, the TCP
buffer backs up, the client missed its ping) takes Engine.IO's queue, with
its order and backpressure.  The queue's writer (``chat.sendqueue.Writer``) is a task
that runs only while the queue holds something, not one parked per
connection: an idle client costs no task.

Reading has the same kind of cost: Engine.IO's WebSocket loop starts a task
for every frame it reads, and races it against a timer (``wait_for``), so
that a client silent for ``PING_INTERVAL + PING_TIMEOUT`` seconds is let
go.  :func:`serve` reads the frames in the connection's own task instead,
straight from aiohttp's ``receive()``, and the connection's ping deadline
(``chat/guard.py``) lets a client go once it leaves a ping unanswered past
``PING_TIMEOUT``, silent or not: its TCP connection is dropped, which ends
the read.  Every coroutine an idle connection waits in is a suspended frame
it keeps for its whole life, so this path adds as few as it can.
What a frame then goes through is Engine.IO's as before (``receive``, the
size limit, the queue and how the session ends); a chat message goes
straight to the handler Engine.IO would call (python-socketio's, which
``chat/server.py`` guards).  A connection that starts on long-polling and
upgrades keeps Engine.IO's own loop (``chat/guard.py``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time

from aiohttp import web
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp

from .sendqueue import SendQueue, Writer

# A connection whose TCP buffer holds more than this gets its broadcasts
# through Engine.IO's queue again, which waits for the buffer to drain.
DIRECT_BUFFER_LIMIT = 64 * 1024
# The TCP connections of the Socket.IO requests in progress (a WebSocket's
# for as long as its session), which the app's drain closes on SIGTERM.
CONNECTIONS = web.AppKey("socketio_connections", set[asyncio.Transport])
# What write() reads of an Engine.IO socket (engineio's AsyncSocket; not an
# API).  A version without these gets every packet through the queue.
ENGINEIO_STATE = ("upgraded", "upgrading", "queue", "last_ping", "closed")
ENGINEIO_TYPES = frozenset("0123456")


class UncompressedWebSocket(eio_aiohttp.WebSocket):
    """Engine.IO's aiohttp WebSocket, without permessage-deflate.

    Browsers offer compression and aiohttp accepts it by default, which
    costs a zlib pass per frame per recipient; chat frames are a few hundred
    bytes, where deflate saves little and fan-out multiplies its cost.
    """

    async def __call__(self, environ):
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(request)
        self.environ = environ
        self.transport = request.transport
        self.sending = False
        # The Engine.IO socket this WebSocket carries (the handler is its
        # bound method): broadcasts may write to it directly, see write().
        socket = getattr(self.handler, "__self__", None)
        if socket is not None and all(hasattr(socket, name) for name in ENGINEIO_STATE):
            socket.direct = self
            if isinstance(socket.queue, SendQueue):  # its TCP buffer counts too
                socket.queue.transport = self.transport
            if not socket.connected:
                # A new session: handed back up, through Engine.IO's request
                # handling, to create_route's handler, which serves it once
                # those frames are gone (see create_route).
                self.socket = socket
                return self
        else:  # an Engine.IO that no longer looks like this: queue path only
            socket = None
        try:  # an upgrade from long-polling: Engine.IO's own loop
            await self.handler(self)
        finally:
            if socket is not None:
                socket.direct = None
        return self._sock

    async def wait(self):
        """The next frame, for Engine.IO's own loop (a connection upgraded
        from long-polling): see :meth:`check`."""
        return await self.check(await super().wait())

    async def check(self, data):
        """``data`` if it is a text Engine.IO packet (types 0 to 6).

        Anything else, a binary frame (the chat has none), an empty frame, a
        packet type Engine.IO does not know, would reach code that raises or
        logs a traceback for it: the client is refused here, and the OSError
        ends the read loop as a closed connection does."""
        if isinstance(data, str) and data[:1] in ENGINEIO_TYPES:
            return data
        socket = getattr(self.handler, "__self__", None)
        why = "binary frame refused" if isinstance(data, bytes) else "not an Engine.IO packet"
        await self.server.refuse_client(getattr(socket, "sid", "?"), why, data)
        raise OSError(why)

    async def send(self, message):
        self.sending = True
        try:
            await super().send(message)
        finally:
            self.sending = False

    def abort(self) -> None:
        """Drop the TCP connection, unsent bytes and all (``guard.shut``)."""
        if self.transport is not None:
            self.transport.abort()

    def write(self, frame: bytes, socket, now: float) -> bool:
        """Write a prebuilt WebSocket frame now, if that keeps the order.

        Engine.IO sends each packet through the connection's queue and a
        writer task that frames it; a broadcast to a room of a hundred wakes
        a hundred writers that frame the same bytes a hundred times.  A
        server's frames are not masked, so one frame fits every recipient:
        this writes it straight to the TCP transport, but only when nothing
        can be overtaken: the queue is empty and its writer is not running
        (so all it took is written), not in the middle of a send, the upgrade is
        done and the connection's buffer is not backing up.  Otherwise the
        caller takes the queue, with its order and backpressure.
        """
        queue = socket.queue
        transport = self.transport
        if (self.sending or not socket.upgraded or socket.upgrading
                or not isinstance(queue, SendQueue) or not queue.reader_waiting()
                or transport is None or transport.is_closing() or self._sock.closed
                or transport.get_write_buffer_size() > DIRECT_BUFFER_LIMIT):
            return False
        if socket.last_ping and now - socket.last_ping > self.server.ping_timeout:
            return False  # let Engine.IO's send notice the client is gone
        transport.write(frame)
        return True



def text_frame(payload: str) -> bytes:
    """An unmasked WebSocket text frame (server to client) holding ``payload``."""
    data = payload.encode()
    size = len(data)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + data



def write_now(socket, encoded: str) -> bool:
    """Write a Socket.IO packet for one connection (``encoded``, its text)
    straight to its WebSocket, if that keeps the order; False: it was not
    written, and must take the queue."""
    direct = getattr(socket, "direct", None)
    return direct is not None and direct.write(text_frame("4" + encoded), socket, time.time())


async def serve(server, request: web.Request) -> web.StreamResponse:
    """Engine.IO's GET for ``request`` (``server`` is Engine.IO's): its
    answer, or, when it opens a WebSocket session, that session, read here
    without a task and a timer per frame until it ends (see the module's
    docstring and :func:`create_route`)."""
    connections, transport = request.app[CONNECTIONS], request.transport
    connections.add(transport)
    ws = None
    try:
        ws = await server.handle_request(request)
    finally:
        if not isinstance(ws, UncompressedWebSocket):
            connections.discard(transport)
    if not isinstance(ws, UncompressedWebSocket):
        return ws  # a long-poll, an upgrade, or a refusal
    socket = ws.socket
    socket.connected = socket.upgraded = True
    writer = Writer(socket, ws)
    handler = server.handlers.get("message")
    direct = not server.async_handlers and inspect.iscoroutinefunction(handler)
    response = ws._sock  # aiohttp's WebSocketResponse (Engine.IO's name for it)
    while True:
        try:  # what Engine.IO's WebSocket.wait() does, without its frame
            data = (await response.receive()).data
            if not isinstance(data, str) or data[:1] not in ENGINEIO_TYPES:
                if not isinstance(data, bytes | str):
                    break  # closed: aiohttp's CLOSE, CLOSED or ERROR message
                await ws.check(data)  # refuses it, and raises
        except (Exception, asyncio.CancelledError):  # closed, refused, or cancelled
            break
        if len(data) > server.max_http_buffer_size:
            break
        pkt = eio_packet.Packet(encoded_packet=data)
        try:
            if direct and pkt.packet_type == eio_packet.MESSAGE:
                try:  # what Engine.IO's receive() and _trigger_event do for it
                    await handler(socket.sid, pkt.data)
                except Exception:
                    server.logger.exception("message async handler error")
            else:
                await socket.receive(pkt)
        except eio_exceptions.UnknownPacketError:
            pass
        except eio_exceptions.SocketIsClosedError:
            server.logger.info("Receive error -- socket is closed")
            break
        except Exception:
            server.logger.exception("Unknown receive error")
        data = pkt = None  # nothing of the last frame kept while idle
    try:
        try:
            await socket.queue.put(None)  # the writer ends after what is queued
            await writer.done()
        finally:
            # Even when the handler is cancelled (aiohttp's handler
            # cancellation, as its test server has it, or a shutdown): else
            # the session would end only at its next pong deadline.
            await socket.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
    finally:
        socket.direct = None
        connections.discard(transport)
        if socket.closed:  # what Engine.IO does once its WebSocket session ends
            server.sockets.pop(socket.sid, None)
    return ws._sock


def create_route(app: web.Application, server, path: str) -> None:
    """Engine.IO's routes on ``app`` (its aiohttp driver's ``create_route``),
    where a new WebSocket session is served by the GET handler itself.

    Engine.IO serves a WebSocket from deep in its request handling
    (``handle_request``, ``_handle_connect``, ``handle_get_request``, the
    upgrade, the WebSocket's ``__call__``), and every one of those frames,
    with what its locals hold (the parsed query, the OPEN packet), then
    lives as long as the connection.  Here ``__call__`` hands a new session
    back up instead (``UncompressedWebSocket``), and the GET handler,
    :func:`serve`, reads it once those frames are gone: about 1.5 KB less
    for every idle client.  The handlers also note each request's TCP
    connection (``CONNECTIONS``) for the app's drain, which a middleware did,
    with a frame of its own.
    """
    connections = app[CONNECTIONS] = set()

    async def post(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        connections.add(transport)
        try:
            return await server.handle_request(request)
        finally:
            connections.discard(transport)

    app.router.add_get(path, functools.partial(serve, server))
    app.router.add_post(path, post)
    app.router.add_route("OPTIONS", path, server.handle_request)
