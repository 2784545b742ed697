"""python-socketio's AsyncServer: hardened against malformed packets and
against sessions that close while connecting, with WebSocket compression
off, a lighter send queue and environ per connection, and broadcasts written
straight to idle WebSockets.

The library decodes each Engine.IO message into a Socket.IO packet and
dispatches it; a frame that does not decode ("42[", "45x-[]", an event
packet with no event name...) raises from deep inside, and Engine.IO logs a
full traceback for every such frame.  One hostile client could then fill the
logs.  Here a malformed frame costs one warning line, and the connection
that sent it is closed: a client that speaks broken Socket.IO is either
buggy or hostile, and in both cases talking on helps no one.
"""

from __future__ import annotations

import asyncio

import socketio
from aiohttp import web
from engineio.async_drivers import aiohttp as eio_aiohttp

# A connection whose TCP buffer holds more than this gets its broadcasts
# through Engine.IO's queue again, which waits for the buffer to drain.
DIRECT_BUFFER_LIMIT = 64 * 1024
# What write() reads of an Engine.IO socket (engineio's AsyncSocket; not an
# API).  A version without these gets every packet through the queue.
ENGINEIO_STATE = ("upgraded", "upgrading", "queue", "last_ping", "closed")
KEPT_ENVIRON = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "REMOTE_ADDR", "HTTP_X_REAL_IP",
                "HTTP_USER_AGENT")


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
        else:  # an Engine.IO that no longer looks like this: queue path only
            socket = None
        try:
            await self.handler(self)
        finally:
            if socket is not None:
                socket.direct = None
        return self._sock

    async def send(self, message):
        self.sending = True
        try:
            await super().send(message)
        finally:
            self.sending = False

    def write(self, frame: bytes, socket, now: float) -> bool:
        """Write a prebuilt WebSocket frame now, if that keeps the order.

        Engine.IO sends each packet through the connection's queue and a
        writer task that frames it; a broadcast to a room of a hundred wakes
        a hundred writers that frame the same bytes a hundred times.  A
        server's frames are not masked, so one frame fits every recipient:
        this writes it straight to the TCP transport, but only when nothing
        can be overtaken: the writer is parked on an empty queue (so it has
        written all it took), not in the middle of a send, the upgrade is
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


class SendQueue:
    """The per-connection queue Engine.IO's writer takes packets from.

    Engine.IO gives every connection an ``asyncio.Queue`` (four deques and an
    Event: about 2.4 KB) and its writer waits on it with
    ``asyncio.wait_for(queue.get(), ...)``, which wraps the ``get()``
    coroutine in a new Task on every wake-up: once per connection per
    broadcast.  This queue keeps one list, and ``get()`` returns a plain
    Future, which ``wait_for`` awaits as it is, without a Task.  It has the
    methods Engine.IO calls (``put``/``put_nowait``, ``get``/``get_nowait``,
    ``task_done``, ``join``, ``empty``, ``qsize``), with asyncio.Queue's
    meaning, unbounded; one reader at a time, as Engine.IO uses it.
    """

    __slots__ = ("_done", "_getter", "_items", "_unfinished")

    def __init__(self):
        # A list, not a deque: an idle connection's queue is empty, and an
        # empty deque costs 600 bytes; a busy one holds a few packets.
        self._items: list = []
        self._getter: asyncio.Future | None = None
        self._unfinished = 0
        self._done: asyncio.Future | None = None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item) -> None:
        self._unfinished += 1
        getter = self._getter
        if getter is not None and not getter.done():
            self._getter = None
            getter.set_result(item)
        else:
            self._items.append(item)

    async def put(self, item) -> None:
        self.put_nowait(item)

    def get_nowait(self):
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    def get(self) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self._items:
            future.set_result(self._items.pop(0))
        else:
            # A getter cancelled by wait_for's timeout is replaced here; an
            # item is never handed to a cancelled future (see put_nowait).
            self._getter = future
        return future

    def reader_waiting(self) -> bool:
        """The reader is parked in ``get()`` on an empty queue."""
        return self._getter is not None and not self._getter.done()

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._done is not None:
            if not self._done.done():
                self._done.set_result(None)
            self._done = None

    async def join(self) -> None:
        if self._unfinished:
            if self._done is None:
                self._done = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._done)


class ChatServer(socketio.AsyncServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The driver table is shared by every Engine.IO server in the
        # process; this server gets its own copy.
        self.eio._async = {**self.eio._async, "websocket": UncompressedWebSocket}
        self.eio.create_queue = SendQueue

    async def _handle_connect(self, eio_sid, namespace, data):
        await super()._handle_connect(eio_sid, namespace, data)
        await self._disconnect_if_gone(eio_sid, namespace or "/")
        # python-socketio keeps each connection's WSGI-style environ (every
        # request header, about 2 KB) for as long as it lives; the chat
        # reads it once, in on_connect, which has now run.  Keep what a log
        # line or a later handler might want.
        environ = self.environ.get(eio_sid)
        if environ is not None and len(environ) > len(KEPT_ENVIRON):
            kept = {key: environ[key] for key in KEPT_ENVIRON if key in environ}
            environ.clear()
            environ.update(kept)

    def _gone(self, eio_sid) -> bool:
        socket = self.eio.sockets.get(eio_sid)
        return socket is None or socket.closed

    async def _send_packet(self, eio_sid, pkt):
        # A session that closed while connecting is still sent its welcome
        # and CONNECT; Engine.IO would log a warning for each.
        if not self._gone(eio_sid):
            await super()._send_packet(eio_sid, pkt)

    async def _send_eio_packet(self, eio_sid, eio_pkt):
        if not self._gone(eio_sid):
            await super()._send_eio_packet(eio_sid, eio_pkt)

    async def _disconnect_if_gone(self, eio_sid, namespace: str) -> None:
        """Run the disconnect path for a session that closed while connecting.

        The library calls the connect handler with the client "pending";
        an Engine.IO close that arrives meanwhile (a long-polling CLOSE
        posted beside the CONNECT, a ping timeout) finds it not connected
        and skips the disconnect handler, and the connect then completes on
        a dead session: a ghost in every room and presence list, forever.
        Here, once the connect is through, a session whose socket is closing
        or gone is disconnected for real; one that closes later takes the
        library's ordinary path, since it is connected by now.
        """
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return  # refused, or already disconnected: nothing left
        if self._gone(eio_sid) or self.eio.sockets[eio_sid].closing:
            await self._handle_disconnect(eio_sid, namespace,
                                          self.reason.CLIENT_DISCONNECT)

    async def _handle_eio_message(self, eio_sid, data):
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            # What decoding a broken packet raises (json's errors are
            # ValueErrors); the chat's own handlers catch their errors.
            self._binary_packet.pop(eio_sid, None)
            sample = data[:40] if isinstance(data, str | bytes) else type(data).__name__
            self.logger.warning("malformed packet from %s (%s: %s): %r; closing it",
                                eio_sid, type(exc).__name__, exc, sample)
            await self.eio.disconnect(eio_sid)
