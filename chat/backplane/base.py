"""What every backplane manager shares: counting, readiness and shutdown."""

from __future__ import annotations

import asyncio
import time

from engineio import packet as eio_packet
from engineio.exceptions import SocketIsClosedError
from socketio import packet as sio_packet

from ..delivery import Sequencer
from ..metrics import Metrics
from ..recovery import offset
from ..websocket import text_frame


class BackplaneUnavailable(RuntimeError):
    """A message was delivered locally but could not reach the other replicas."""


class Observed:
    """Mixin placed before a python-socketio manager class.

    It delivers broadcasts to this replica's sockets on a fast path, counts
    the chat messages it writes, answers readiness, and knows how to stop
    its background work.
    """

    def __init__(self, *args, metrics: Metrics, **kwargs):
        super().__init__(*args, **kwargs)
        self.metrics = metrics
        self.sequencer: Sequencer | None = None
        # sid -> pid of the connections that asked for offsets (recovery.py).
        self.offsets: dict[str, str] = {}
        # sid -> (epoch, the last number it has): a recovered session that
        # saw more of its room than this replica has written yet (entering.py).
        self.holdback: dict[str, tuple[str, int]] = {}

    async def pre_connect(self, eio_sid, namespace):
        """A connection whose session was claimed for it (``recovery.py``)
        gets its old sid back; the library draws a new one otherwise."""
        recovery = getattr(self.server, "recovery", None)
        restored = recovery.pending.get(eio_sid) if recovery is not None else None
        sid = restored.record["sid"] if restored is not None else None
        if sid is None or namespace != "/" or sid in self.rooms.get("/", {}).get(None, {}):
            # (A sid still known here is a fresh session: recovery.take.)
            return await super().pre_connect(eio_sid, namespace)
        eio = self.server.eio
        eio.generate_id = lambda: sid  # the library's one way to name a sid
        try:  # (no await inside: nothing else can draw a sid meanwhile)
            return await super().pre_connect(eio_sid, namespace)
        finally:
            del eio.generate_id

    def sequence(self, history, logger, catch_up_every: float = 1.0) -> Sequencer:
        """Deliver numbered chat messages through a :class:`Sequencer`
        (``chat.delivery``): in order, once, with holes filled from
        ``history``."""
        async def write(room, message):
            # As it came off a room channel, or encoded here once for all.
            packet = message.get("packet") or self._encode("message", [message], "/")
            await self._write_packet(packet, "/", room, None, counted=True,
                                     offset=offset(message),
                                     number=(message["epoch"], message["seq"]))

        def occupied(room) -> bool:
            return bool(self.rooms.get("/", {}).get(room))

        self.sequencer = Sequencer(history, write, occupied, self.metrics, logger,
                                   catch_up_every)
        return self.sequencer

    async def emit(self, event, data, namespace=None, room=None, skip_sid=None,
                   callback=None, to=None, **kwargs):
        """A chat message emitted with ``ignore_queue`` (its history already
        relayed it: ``RedisHistory.relays``) still goes through the room's
        line here; everything else as the manager class does it."""
        if (kwargs.get("ignore_queue") and callback is None and not isinstance(data, tuple)
                and await self._sequenced(event, [data], namespace, to or room)):
            return None
        return await super().emit(event, data, namespace=namespace, room=room,
                                  skip_sid=skip_sid, callback=callback, to=to, **kwargs)

    async def _sequenced(self, event, args, namespace, room) -> bool:
        """Hand a numbered chat message to the sequencer; False if it is not one."""
        if (event != "message" or self.sequencer is None or namespace not in (None, "/")
                or not isinstance(room, str) or len(args) != 1
                or not isinstance(args[0], dict) or "seq" not in args[0]):
            return False
        await self.sequencer.accept(room, args[0])
        return True

    def _encode(self, event, args: list, namespace) -> str | None:
        """The Socket.IO packet text of an event; None when it has binary parts."""
        pkt = self.server.packet_class(sio_packet.EVENT, namespace=namespace,
                                       data=[event, *args])
        encoded = pkt.encode()
        return None if isinstance(encoded, list) else encoded

    async def _deliver(self, event, args: list, namespace, room, skip_sid) -> int | None:
        """Write one event to this replica's sockets in ``room``.

        python-socketio's own local emit starts an asyncio task per
        recipient and waits for all of them; a chat message to a room of a
        hundred costs a hundred tasks.  Here the packet is encoded once (see
        :meth:`_write_packet`).  Returns how many sockets got it, or None
        when the packet has binary parts and the library's path must take it.
        """
        encoded = self._encode(event, args, namespace)
        if encoded is None:
            return None
        return await self._write_packet(encoded, namespace, room, skip_sid,
                                        counted=event == "message")

    async def _write_packet(self, encoded: str, namespace, room, skip_sid, *,
                            counted: bool, offset: str | None = None,
                            number: tuple[str, int] | None = None) -> int:
        """Write an encoded Socket.IO packet to this replica's sockets in
        ``room``: its WebSocket frame is built once and written straight to
        each idle WebSocket (``UncompressedWebSocket.write`` in
        ``chat/websocket.py``); other sockets get it through their send queue,
        in a plain loop (a queue put does not block).  ``counted``: a chat
        message, for the metrics.  ``offset``: its recovery offset, an extra
        last argument for the connections in :attr:`offsets`; ``number``: its
        ``(epoch, seq)``, for the connections in :attr:`holdback`."""
        plain = Variant(encoded)
        marked = Variant(f'{encoded[:-1]},"{offset}"]') if offset and self.offsets else None
        now = time.time()
        skip = skip_sid if isinstance(skip_sid, list | tuple) else (skip_sid,)
        sockets = self.server.eio.sockets
        sent = direct_writes = 0
        for sid, eio_sid in self.get_participants(namespace, room):
            socket = sockets.get(eio_sid)
            if sid in skip or socket is None or socket.closed:
                continue
            if self.holdback and sid in self.holdback and number is not None:
                held = self.holdback[sid]
                if number[0] == held[0] and number[1] <= held[1]:
                    continue  # it has this one already
                del self.holdback[sid]
            variant = marked if marked is not None and sid in self.offsets else plain
            direct = getattr(socket, "direct", None)
            if direct is not None and direct.write(variant.wire(), socket, now):
                sent += 1
                direct_writes += 1
                continue
            try:
                await socket.send(variant.frame)
            except SocketIsClosedError:  # closed since: nothing to deliver
                continue
            sent += 1
        if counted:
            self.metrics.delivered.inc(sent)
            self.metrics.written_directly.inc(direct_writes)
        return sent

    async def _handle_emit(self, message):
        """Pub/sub managers deliver every emit, local or relayed, through here."""
        if not message.get("callback") and not message.get("binary"):
            if await self._sequenced(message["event"], message["data"],
                                     message.get("namespace"), message.get("room")):
                return
            delivered = await self._deliver(
                message["event"], message["data"], message.get("namespace") or "/",
                message.get("room"), message.get("skip_sid"))
            if delivered is not None:
                return
        self._count_local(message.get("event"), message.get("namespace"),
                          message.get("room"), message.get("skip_sid"))
        await super()._handle_emit(message)

    def _count_local(self, event, namespace, room, skip_sid) -> None:
        """Count a chat message delivered by the library's own path."""
        if event != "message":
            return
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        count = sum(
            1 for sid, _ in self.get_participants(namespace or "/", room) if sid not in skip
        )
        self.metrics.delivered.inc(count)

    async def ready(self) -> tuple[bool, str]:
        """Return ``(ready, reason)``."""
        return True, "in-memory backplane"

    async def close(self) -> None:
        """Stop background tasks and close connections."""
        task = getattr(self, "thread", None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class Variant:
    """One form of a packet for :meth:`Observed._write_packet`: its Engine.IO
    packet, and its WebSocket frame built on first use, once for all."""

    __slots__ = ("_wire", "frame")

    def __init__(self, encoded: str):
        self.frame = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        self._wire: bytes | None = None

    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = text_frame(self.frame.encode())
        return self._wire
