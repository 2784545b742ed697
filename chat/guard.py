"""Closing a hostile connection for good, whatever its transport.

Engine.IO's own ``disconnect(sid)`` is not enough against a client that
does not cooperate.  It runs the disconnect handlers, queues a CLOSE packet
and marks the socket closed, then waits for the queue to be written; but
the WebSocket's read loop never looks at that mark, so a client that
ignores the CLOSE packet keeps sending frames that are read and handled one
by one, and a client that does not read at all makes the wait last
forever.  :func:`shut` instead drops what waits to be sent, aborts the TCP
connection of a WebSocket (its read loop then ends, as when a client goes
away), and closes the Engine.IO socket without waiting, which runs the
chat's disconnect handler at once.

Long-polling gets the same treatment through :class:`GuardedSocket`: a POST
whose body does not decode (invalid UTF-8, more packets than Engine.IO
accepts in one payload, a packet type a client does not send) is refused
with 400 and one log line instead of a traceback and 200 (or, for a packet
type, a POST that hangs until the client polls again: the library's
``disconnect`` waits for the CLOSE packet to be fetched), and the packets
after the one that closed the connection are not handled.
"""

from __future__ import annotations

import time

from engineio import async_socket, exceptions, packet, payload

# What decoding a polling body can raise: bad UTF-8 and "too many packets"
# are ValueErrors, a JSONP body without its "d" field a KeyError.
UNDECODABLE = (ValueError, KeyError, IndexError, TypeError)
KNOWN_TYPES = frozenset(range(len(packet.packet_names)))


async def shut(socket) -> None:
    """Close an Engine.IO ``socket`` now, without waiting on its client."""
    if socket.closed or socket.closing:
        return
    socket.refused = True
    queue = socket.queue
    refuse = getattr(queue, "refuse", None)
    if refuse is not None:
        refuse()  # what waits is dropped, and nothing more is queued
    direct = getattr(socket, "direct", None)
    if direct is not None:
        direct.abort()
    # A long-poll waiting for packets returns now, with none (GuardedSocket.close).
    await socket.close(wait=False, abort=True, reason=socket.server.reason.SERVER_DISCONNECT)


class GuardedSocket(async_socket.AsyncSocket):
    """Engine.IO's socket, with a long-polling POST that refuses what does
    not decode, and a close that ends a pending long-poll at once, pinged
    from a timer instead of a task, which also drops a WebSocket that leaves
    a ping unanswered.  (A connection that opens as a WebSocket is read by
    ``chat.websocket.serve``, without a task per frame.)
    ``chat.server.ChatServer`` gives every new socket this class; the one
    state it adds is that timer."""

    deadline_tick: int | None = None  # its ping or pong deadline (chat/deadlines.py)

    def schedule_ping(self):
        """The next PING in ``PING_INTERVAL`` seconds, as Engine.IO's does,
        on the server's shared deadline timer: Engine.IO starts a task that
        sleeps the interval (with its coroutines, its Future and its context,
        about a kilobyte of every idle connection), and even a loop timer of
        its own would be half that."""
        if self.closed or self.closing:  # a PONG read after the close
            return
        if self.last_ping:  # the previous ping was answered (or none was sent)
            self.last_ping = None
            self.server.deadlines.set(self, self.server.ping_interval, self._ping)

    def _ping(self) -> None:
        if self.closing or self.closed:
            return
        self.last_ping = time.time()
        self.queue.put_nowait(packet.Packet(packet.PING))
        # Engine.IO notices an unanswered ping only when it next sends
        # something, and a WebSocket writer no longer waits with a timeout.
        self.server.deadlines.set(self, self.server.ping_timeout, self._pong_due)

    def _pong_due(self) -> None:
        """No PONG within ``PING_TIMEOUT``: a WebSocket's TCP connection is
        dropped, which ends its read loop and the session; a long-poll is
        let go by Engine.IO's own check at its next request."""
        direct = getattr(self, "direct", None)
        if self.last_ping and not (self.closing or self.closed) and direct is not None:
            direct.abort()

    async def check_ping_timeout(self):
        """Engine.IO's service task, finding the client past its pong
        deadline before ``_pong_due`` did: Engine.IO closes the session with
        a CLOSE packet, which a client that answers nothing ignores; a
        WebSocket's TCP connection is dropped as ``_pong_due`` would."""
        alive = await super().check_ping_timeout()
        direct = getattr(self, "direct", None)
        if not alive and direct is not None:
            direct.abort()
        return alive

    async def close(self, wait=True, abort=False, reason=None):
        already = self.closed or self.closing
        self.server.deadlines.cancel(self)
        await super().close(wait=wait, abort=abort, reason=reason)
        if already:
            return
        if abort or getattr(self, "direct", None) is not None:
            # Engine.IO's abort (a client's CLOSE packet) leaves the client's
            # long-poll GET waiting for the next ping, up to PING_INTERVAL:
            # the python-socketio client's disconnect() waited that long.
            # An empty answer now lets it go.  A WebSocket is closed after
            # what is queued (the CLOSE packet): Engine.IO left that to the
            # client, and the read loop's timeout, which serve() has not.
            self.queue.put_nowait(None)

    async def handle_post_request(self, environ):
        try:
            length = int(environ.get("CONTENT_LENGTH", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= self.server.max_http_buffer_size:
            await self.server.refuse_client(self.sid, "POST too long", str(length))
            raise exceptions.ContentTooLongError()  # answered 400
        body = await environ["wsgi.input"].read(length)
        try:
            packets = payload.Payload(encoded_payload=body.decode("utf-8")).packets
        except UNDECODABLE as exc:
            await self.server.refuse_client(self.sid, f"undecodable POST ({exc})"[:120], body)
            raise exceptions.EngineIOError() from None  # answered 400
        for pkt in packets:
            try:
                if pkt.packet_type not in KNOWN_TYPES:  # receive() would log a traceback
                    raise exceptions.UnknownPacketError()
                await self.receive(pkt)
            except exceptions.UnknownPacketError:  # OPEN, PING, NOOP, 7...
                await self.server.refuse_client(self.sid, "not an Engine.IO packet a client "
                                                "sends", str(pkt.packet_type))
            if self.closed:  # the rest is not read
                if getattr(self, "refused", False):
                    raise exceptions.EngineIOError()  # answered 400
                break
