"""python-socketio's AsyncServer: hardened against hostile clients and against
sessions that close while connecting, with WebSocket compression off, a
lighter send queue and environ per connection, and broadcasts and acks
written straight to idle WebSockets (``chat/websocket.py``).

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
from engineio import async_socket
from redis.exceptions import RedisError
from socketio import packet as sio_packet

from .deadlines import Deadlines
from .guard import GuardedSocket, shut
from .logs import ClientLog, client_address
from .sendqueue import SendQueue
from .websocket import UncompressedWebSocket, create_route, write_now

JSON_SCALARS = frozenset({str, int, float, bool, type(None)})
BINARY = (bytes, bytearray)
KEPT_ENVIRON = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "REMOTE_ADDR", "HTTP_X_REAL_IP",
                "HTTP_USER_AGENT")


class ChatPacket(sio_packet.Packet):
    """Socket.IO's packet, with a cheaper test for binary parts.

    Every packet the server builds (each ack, each broadcast) is first
    searched for bytes; the library does it with a list and a reduce per
    level.  Same answer here, in one loop that stops at the first bytes."""

    @classmethod
    def data_is_binary(cls, data) -> bool:
        todo = [data]
        while todo:
            item = todo.pop()
            kind = type(item)
            if kind in JSON_SCALARS:
                continue
            if kind is dict or isinstance(item, dict):
                todo.extend(item.values())
            elif kind is list or isinstance(item, list):
                todo.extend(item)
            elif isinstance(item, BINARY):
                return True
        return False


class ChatServer(socketio.AsyncServer):
    def __init__(self, *args, max_queued_bytes: int | None = None, **kwargs):
        kwargs.setdefault("serializer", ChatPacket)
        super().__init__(*args, **kwargs)
        # The driver table is shared by every Engine.IO server in the
        # process; this server gets its own copy.
        self.eio._async = {**self.eio._async, "websocket": UncompressedWebSocket,
                           "create_route": create_route}
        self.max_queued_bytes = max_queued_bytes
        self.eio.create_queue = lambda: SendQueue(self.max_queued_bytes, self._overflowed)
        self.eio.refuse_client = self.refuse
        self.eio.deadlines = Deadlines()  # every connection's ping (GuardedSocket)
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
        if self._gone(eio_sid):
            return
        encoded = pkt.encode()
        if isinstance(encoded, list):  # binary parts: the library's way
            await super()._send_packet(eio_sid, pkt)
        elif not write_now(self.eio.sockets.get(eio_sid), encoded):
            # (an ack, say: straight to an idle WebSocket, chat/websocket.py)
            await self.eio.send(eio_sid, encoded)

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

    async def _handle_event(self, eio_sid, namespace, id, data):
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or "/")
        if sid is None or not self.manager.is_connected(sid, namespace or "/"):
            # An event on a namespace the client is not in (its CONNECT was
            # refused, or never sent): Socket.IO's clients hold their emits
            # until connected, so this is not one.  The library would log a
            # line per event, unbounded.
            return await self.refuse(eio_sid, "event before a CONNECT was accepted", data)
        await super()._handle_event(eio_sid, namespace, id, data)

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
