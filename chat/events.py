"""Socket.IO event handlers: the chat protocol, transport-agnostic.

These handlers only call ``self.emit`` / ``enter_room`` / ``leave_room``; the
client manager chosen in ``chat.backplane`` decides whether an emit stays in
this process or crosses Redis to the other replicas.

Events (namespace ``/``; README.md has the full table):

* connect with ``auth={"name", "room"}``; refused with a reason otherwise.
* server -> client ``welcome`` right after connecting.
* client -> server ``message`` ``{"text"}``; ack ``{"ok": true, "id"}`` or
  ``{"ok": false, "error"}``; the room receives ``message``.
* client -> server ``join`` ``{"room"}``; the rooms left and entered receive
  ``system`` notices.
* client -> server ``typing`` ``{"typing": bool}``; relayed to the room.

Anything else a client sends gets ``{"ok": false, "error": ...}`` as its ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

import socketio

from .backplane import BackplaneUnavailable
from .metrics import Metrics
from .protocol import (
    ProtocolError,
    TokenBucket,
    chat_message,
    clean_text,
    parse_auth,
    room_of,
    system_notice,
)
from .settings import Settings

LOCAL_ONLY = "backplane unavailable: delivered only to users on this server"
CLIENT_EVENTS = frozenset({"message", "join", "typing"})


def refusal(error: str, **extra) -> dict:
    return {"ok": False, "error": error, **extra}


@dataclasses.dataclass
class Client:
    name: str
    room: str
    messages: TokenBucket
    typing: TokenBucket


class ChatNamespace(socketio.AsyncNamespace):
    def __init__(self, settings: Settings, metrics: Metrics, logger: logging.Logger):
        super().__init__("/")
        self.settings = settings
        self.metrics = metrics
        self.log = logger
        self.clients: dict[str, Client] = {}
        self._notices: set[asyncio.Task] = set()

    async def trigger_event(self, event, *args):
        """Route an event, refusing names the protocol does not define.

        python-socketio calls this both for its own ``connect``/``disconnect``
        and for every event a client emits, so a client could otherwise
        replay ``connect`` by emitting an event of that name.  The manager's
        state tells the two apart.
        """
        sid = args[0] if args else None
        manager = self.server.manager
        try:
            if event == "connect" and manager.is_pre_connected(sid, self.namespace):
                return await self.on_connect(*args)
            if event == "disconnect" and not manager.is_connected(sid, self.namespace):
                return await self.on_disconnect(*args)
            if event in CLIENT_EVENTS and sid in self.clients:
                payload = args[1] if len(args) > 1 else None
                return await getattr(self, f"on_{event}")(sid, payload)
        except socketio.exceptions.ConnectionRefusedError:
            raise
        except Exception:
            self.log.exception("handler for %r failed (sid %s)", event, sid)
            if event == "connect":
                raise socketio.exceptions.ConnectionRefusedError("internal error") from None
            return refusal("internal error")
        # Unknown events cost the sender a token like messages do, so they
        # cannot be used to flood the replica or its log.
        client = self.clients.get(sid)
        if client is not None and not client.messages.take():
            return refusal("rate limit: too many requests, slow down")
        self.log.debug("unknown event %.40r from %s", event, sid)
        return refusal(f"unknown event {str(event)[:40]!r}")

    async def on_connect(self, sid, environ, auth=None):
        try:
            name, room = parse_auth(auth)
        except ProtocolError as exc:
            self.log.info("refused %s from %s: %s", sid, _address(environ), exc)
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        s = self.settings
        await self.enter_room(sid, room)
        welcome = {
            "server": s.server_id, "mode": s.mode, "sid": sid, "name": name,
            "room": room, "max_message_length": s.max_message_length,
        }
        # The client is on this replica: no need to cross the backplane.
        await self.emit("welcome", welcome, to=sid, ignore_queue=True)
        # Registered last: if anything above failed, nothing is left behind.
        self.clients[sid] = Client(
            name=name, room=room,
            messages=TokenBucket(s.message_rate, s.message_burst),
            typing=TokenBucket(5.0, 10),
        )
        self.metrics.connected.inc()
        self.log.info("connect %s name=%r room=%r from %s", sid, name, room, _address(environ))
        self._notice(room, name, "join", skip_sid=sid)

    async def on_disconnect(self, sid, reason=None):
        client = self.clients.pop(sid, None)
        if client is None:
            return
        self.metrics.connected.dec()
        self.log.info("disconnect %s name=%r (%s)", sid, client.name, reason)
        self._notice(client.room, client.name, "leave")

    async def on_message(self, sid, payload):
        started = time.perf_counter()
        try:
            return await self._relay_message(self.clients[sid], payload)
        finally:
            self.metrics.handling.observe(time.perf_counter() - started)

    async def _relay_message(self, client: Client, payload) -> dict:
        try:
            if not client.messages.take():
                raise ProtocolError("rate limit: too many messages, slow down")
            text = clean_text(payload, self.settings.max_message_length)
        except ProtocolError as exc:
            self.metrics.rejected.inc()
            return refusal(str(exc))
        message = chat_message(room=client.room, name=client.name, text=text,
                               server=self.settings.server_id)
        self.metrics.accepted.inc()
        try:
            await self.emit("message", message, room=client.room)
        except BackplaneUnavailable:
            return refusal(LOCAL_ONLY, id=message["id"])
        return {"ok": True, "id": message["id"]}

    async def on_join(self, sid, payload):
        client = self.clients[sid]
        try:
            if not client.messages.take():
                raise ProtocolError("rate limit: too many requests, slow down")
            room = room_of(payload)
        except ProtocolError as exc:
            return refusal(str(exc))
        old = client.room
        if room != old:
            await self.leave_room(sid, old)
            await self.enter_room(sid, room)
            client.room = room
            self.log.info("join %s name=%r %r -> %r", sid, client.name, old, room)
            self._notice(old, client.name, "leave")
            self._notice(room, client.name, "join", skip_sid=sid)
        return {"ok": True, "room": room}

    async def on_typing(self, sid, payload):
        client = self.clients[sid]
        if not client.typing.take():
            return refusal("rate limit: too many typing events")
        typing = bool(payload.get("typing", True)) if isinstance(payload, dict) else True
        event = {"name": client.name, "room": client.room, "typing": typing}
        try:
            await self.emit("typing", event, room=client.room, skip_sid=sid)
        except BackplaneUnavailable:
            return refusal(LOCAL_ONLY)
        return {"ok": True}

    def _notice(self, room, name, kind, skip_sid=None) -> None:
        """Tell a room that someone joined or left, in the background.

        Nobody waits for a notice, so a slow or absent Redis must not hold up
        the connect, join or disconnect that caused it.
        """
        notice = system_notice(room=room, name=name, kind=kind,
                               server=self.settings.server_id)
        task = asyncio.ensure_future(self._send_notice(notice, room, skip_sid))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _send_notice(self, notice, room, skip_sid) -> None:
        # If Redis is down the manager has logged it, and the members on this
        # replica have the notice already: nothing more to do.
        with contextlib.suppress(BackplaneUnavailable):
            await self.emit("system", notice, room=room, skip_sid=skip_sid)

    async def flush(self, timeout: float = 2.0) -> None:
        """Let notices still being sent finish (at shutdown)."""
        if self._notices:
            await asyncio.wait(set(self._notices), timeout=timeout)


def _address(environ) -> str:
    """The client's address as NGINX saw it (X-Real-IP), else the peer's.

    Not the first X-Forwarded-For entry: the client writes that one."""
    return environ.get("HTTP_X_REAL_IP") or environ.get("REMOTE_ADDR", "?")
