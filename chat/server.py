"""python-socketio's AsyncServer: hardened against hostile clients and against
sessions that close while connecting, with WebSocket compression off, a
lighter send queue and environ per connection, and broadcasts written
straight to idle WebSockets.

Hardening, in the order a packet meets it:

* A frame that does not decode ("42[", "45x-[]", an event packet with no
  event name, JSON nested too deep or holding NaN, see ``chat/jsonio.py``)
  raises from deep inside the library, which would log a traceback per
  frame.  Here it costs one warning line and the connection:
  a client that speaks broken Socket.IO is buggy or hostile, and talking on
  helps no one.  The close is real (``chat/guard.py``): the WebSocket's TCP
  connection is aborted, so no further frame of that client is read.
* Binary packets (Socket.IO types 5 and 6, and binary frames) are refused
  the same way: the chat has no binary events, and the library would hold
  every announced attachment in memory until the announced count arrived.
  So is a WebSocket frame that is no Engine.IO packet at all
  (``UncompressedWebSocket.wait``).
* Long-polling bodies that do not decode are answered 400 (``GuardedSocket``).
* Every connection's outgoing bytes are capped (``MAX_QUEUED_BYTES``): its
  ``SendQueue`` counts what waits plus its TCP write buffer, and a client
  that stops reading is disconnected once over the cap, what waited for it
  dropped at once.
* The warning lines one client causes are bounded (``chat.logs.ClientLog``).
* A session that closed while its connect handler ran (a long-polling CLOSE
  posted beside the CONNECT) is disconnected once the connect completes,
  instead of living on as a ghost (``_disconnect_if_gone``).
"""

from __future__ import annotations

import asyncio
import contextlib

import socketio
from aiohttp import web
from engineio import async_socket
from engineio.async_drivers import aiohttp as eio_aiohttp
from redis.exceptions import RedisError
from socketio import packet as sio_packet

from .guard import GuardedSocket, shut
from .logs import ClientLog, client_address
from .sendqueue import SendQueue

# A connection whose TCP buffer holds more than this gets its broadcasts
# through Engine.IO's queue again, which waits for the buffer to drain.
DIRECT_BUFFER_LIMIT = 64 * 1024
# What write() reads of an Engine.IO socket (engineio's AsyncSocket; not an
# API).  A version without these gets every packet through the queue.
ENGINEIO_STATE = ("upgraded", "upgrading", "queue", "last_ping", "closed")
ENGINEIO_TYPES = frozenset("0123456")
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
            if isinstance(socket.queue, SendQueue):  # its TCP buffer counts too
                socket.queue.transport = self.transport
        else:  # an Engine.IO that no longer looks like this: queue path only
            socket = None
        try:
            await self.handler(self)
        finally:
            if socket is not None:
                socket.direct = None
        return self._sock

    async def wait(self):
        """The next frame, if it is a text Engine.IO packet (types 0 to 6).

        Anything else, a binary frame (the chat has none), an empty frame, a
        packet type Engine.IO does not know, would reach code that raises or
        logs a traceback for it: the client is refused here, and the OSError
        ends Engine.IO's read loop as a closed connection does."""
        data = await super().wait()
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


class ChatServer(socketio.AsyncServer):
    def __init__(self, *args, max_queued_bytes: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # The driver table is shared by every Engine.IO server in the
        # process; this server gets its own copy.
        self.eio._async = {**self.eio._async, "websocket": UncompressedWebSocket}
        self.max_queued_bytes = max_queued_bytes
        self.eio.create_queue = lambda: SendQueue(self.max_queued_bytes, self._overflowed)
        self.eio.refuse_client = self.refuse
        self.client_log = ClientLog(self.logger)
        self._closing: set[asyncio.Task] = set()
        self.recovery = None  # chat.recovery.Recovery, set by the app

    async def _handle_eio_connect(self, eio_sid, environ):
        socket = self.eio.sockets.get(eio_sid)
        if type(socket) is async_socket.AsyncSocket:
            socket.__class__ = GuardedSocket  # long-polling POSTs checked
        # Engine.IO's aiohttp driver writes 127.0.0.1 here whoever connects;
        # the peer's address keys the per-client log limit.
        request = environ.get("aiohttp.request")
        if request is not None and request.remote:
            environ["REMOTE_ADDR"] = request.remote
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_connect(self, eio_sid, namespace, data):
        # A stock client coming back presents its session (recovery.py):
        # claimed before the library draws a sid, so that it can keep its old one.
        recovery = self.recovery
        if (recovery is not None and recovery.enabled and isinstance(data, dict)
                and "pid" in data and (namespace or "/") == "/"):
            namespace_handler = self.namespace_handlers.get("/")
            try:
                await recovery.claim(data.get("pid"), data.get("offset"), eio_sid,
                                     lambda record: namespace_handler.admits(record, data))
            except (OSError, RedisError) as exc:
                self.logger.debug("recovery: cannot claim a session: %s", exc)
        try:
            await super()._handle_connect(eio_sid, namespace, data)
        finally:
            unused = recovery.pending.pop(eio_sid, None) if recovery is not None else None
            if unused is not None:  # refused, or never reached the handler
                with contextlib.suppress(OSError, RedisError):
                    await recovery.abandon(unused, None)
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

    async def _handle_eio_disconnect(self, eio_sid, reason):
        # Engine.IO names its own CLOSE packet (a long-polling client whose
        # engine shut) "client disconnect", as Socket.IO's DISCONNECT is
        # named; only the latter is a goodbye.  A client that says goodbye
        # sends DISCONNECT first, so whatever is still connected here lost
        # its transport, and may come back to its session (recovery.py).
        if reason == self.reason.CLIENT_DISCONNECT:
            reason = self.reason.TRANSPORT_CLOSE
        await super()._handle_eio_disconnect(eio_sid, reason)

    def _gone(self, eio_sid) -> bool:
        socket = self.eio.sockets.get(eio_sid)
        return socket is None or socket.closed

    async def _send_packet(self, eio_sid, pkt):
        if (pkt.packet_type == sio_packet.CONNECT and self.recovery is not None
                and isinstance(pkt.data, dict)):
            pid = self.recovery.pid_of.get(pkt.data.get("sid"))
            if pid is not None:  # the private session id a stock client keeps
                pkt.data = {**pkt.data, "pid": pid}
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
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return  # refused already: the rest of what it sent is not handled
        if isinstance(data, bytes) or (isinstance(data, str) and data[:1] in ("5", "6")):
            # No binary event in the chat; the library would hold every
            # announced attachment until the announced count arrived.
            return await self.refuse(eio_sid, "binary packet refused", data)
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            # What decoding a broken packet raises (JSON's errors are
            # ValueErrors, chat/jsonio.py); the chat's own handlers catch
            # their errors.
            await self.refuse(eio_sid, f"malformed packet ({type(exc).__name__}: {exc})",
                              data)

    async def refuse(self, eio_sid, why: str, data) -> None:
        """One warning line (bounded per client), then the connection is shut."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return  # shut already: what was in flight needs no line
        sample = data[:40] if isinstance(data, str | bytes) else type(data).__name__
        self.client_log.warning(client_address(self.environ.get(eio_sid) or {}),
                                "%s from %s: %r; closing it", why[:160], eio_sid, sample)
        self._binary_packet.pop(eio_sid, None)
        await shut(socket)

    def _overflowed(self, queue: SendQueue, backlog: int) -> None:
        """A connection's queue went over ``max_queued_bytes``: shut it."""
        found = [item for item in self.eio.sockets.items() if item[1].queue is queue]
        if not found:
            return
        eio_sid, socket = found[0]
        self.client_log.warning(
            client_address(self.environ.get(eio_sid) or {}),
            "%s does not read: %d bytes wait for it (MAX_QUEUED_BYTES=%d); closing it",
            eio_sid, backlog, self.max_queued_bytes)
        task = asyncio.ensure_future(shut(socket))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
