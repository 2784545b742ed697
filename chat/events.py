"""Socket.IO event handlers: the chat protocol, transport-agnostic.

These handlers only call ``self.emit`` / ``enter_room`` / ``leave_room``; the
client manager chosen in ``chat.backplane`` decides whether an emit stays in
this process or crosses Redis to the other replicas.

Events (namespace ``/``; README.md has the full table):

* connect with ``auth={"name", "room", "resume"?, "key"?}`` in open mode, or
  ``auth={"token", "room", "resume"?}`` with signed identities (``auth.py``
  says who is connecting); refused with a reason otherwise, also when the
  room is reserved, over the room limits (``rooms.py``), not allowed by the
  token, or (open mode) when someone live in it has a name that looks the
  same (``names.py``, ``presence.py``).
* server -> client ``welcome``: the room's recent history (or, with
  ``resume``, exactly what the client missed, or a ``gap`` saying why not),
  who is in the room, and the client's replica.  Sent again after a ``join``
  (``entering.py``, which also takes up a stock client's recovered session).
* client -> server ``message`` ``{"text"}``: stored in the room's history
  (which numbers it), then relayed; ack ``{"ok": true, "id", "seq"}`` or
  ``{"ok": false, "error"}``; the room receives ``message``.
* client -> server ``join`` ``{"room"}``; ack ``{"ok", "room", "history", ...}``.
  Every check (rate limit, name, room limits) comes before the client
  leaves its room, so a refused join leaves it where it was.
* client -> server ``history`` ``{"after": seq}``: the messages after ``seq``,
  at most ``HISTORY_MAX_BYTES`` of them (``truncated``: ask again for the rest).
* client -> server ``presence``: the room's members on every replica.
* client -> server ``typing`` ``{"typing": bool}``; relayed to the room.
* server -> room ``presence`` ``{"joined", "left", "count"}`` as people come
  and go (``presence.py``).

Anything else a client sends gets ``{"ok": false, "error": ...}`` as its ack.

One message, end to end: ``on_message`` appends it to the room's history
(one Redis script gives it the next number), then ``emit``s it; every
replica that has members in the room writes it to them through its
``Sequencer`` (``delivery.py``), in number order, without duplicates, and
reading from the history whatever the live path dropped.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time

import socketio
from redis.exceptions import RedisError

from .auth import Identities
from .backplane import BackplaneUnavailable
from .delivery import Sequencer
from .entering import NO_HISTORY, Client, Entrance
from .history import (
    HistoryNotReplicated,
    HistoryRefused,
    HistoryUnavailable,
    HistoryUncertain,
    resume_gap,
)
from .logs import Throttle
from .metrics import Metrics
from .presence import NameTaken, Presence
from .protocol import (
    ProtocolError,
    TokenBucket,
    chat_message,
    clean_text,
    history_after,
    message_id,
    parse_place,
    parse_resume,
    room_of,
    typing_flag,
    within,
)
from .recovery import Recovery
from .rooms import RoomGate
from .settings import Settings

LOCAL_ONLY = "backplane unavailable: delivered only to users on this server"
NOT_SENT = "not sent: the chat's storage (Redis) does not answer; try again"
UNKNOWN = ("unknown: the chat's storage (Redis) did not answer in time, so the message "
           "may or may not be stored; sending it again with the same id is safe")
NOT_REPLICATED = ("unknown: {}, so a Redis failover now could lose it; sending it again "
                  "with the same id is safe")
TOO_MANY = "rate limit: too many requests, slow down"
CLIENT_EVENTS = frozenset({"message", "join", "typing", "history", "presence"})


def refusal(error: str, **extra) -> dict:
    return {"ok": False, "error": error, **extra}


class ChatNamespace(Entrance, socketio.AsyncNamespace):
    def __init__(self, settings: Settings, metrics: Metrics, logger: logging.Logger, *,
                 history, sequencer: Sequencer, presence: Presence, recovery: Recovery,
                 identities: Identities | None = None):
        super().__init__("/")
        self.recovery = recovery
        self.identities = identities or Identities.from_settings(settings)
        self.settings = settings
        self.metrics = metrics
        self.log = logger
        self.history = history
        self.sequencer = sequencer
        self.presence = presence
        self.clients: dict[str, Client] = {}
        # Storage failures concern every sender at once: a line per
        # failure would be a line per chat message during an outage.
        self.storage_log = logger.getChild("storage")
        if not any(isinstance(f, Throttle) for f in self.storage_log.filters):
            self.storage_log.addFilter(Throttle(interval=5.0))
        self.rooms = RoomGate(settings.rooms_per_minute, settings.max_rooms,
                              occupied=presence.occupancy.__contains__,
                              live=presence.occupancy.__len__)

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
            return refusal(TOO_MANY)
        self.log.debug("unknown event %.40r from %s", event, sid)
        return refusal(f"unknown event {str(event)[:40]!r}")

    async def on_connect(self, sid, environ, auth=None):
        address = _address(environ)
        restored = await self.recovery.take(sid, self.server.manager.eio_sid_from_sid(sid, "/"))
        if restored is not None and await self._resume(sid, restored, address):
            self.metrics.sessions_recovered.inc()
            return
        if isinstance(auth, dict) and "pid" in auth and self.recovery.enabled:
            self.metrics.sessions_not_recovered.inc()
        try:
            room, resume = parse_place(auth)
            identity = self.identities.identify(auth)
            identity.may_enter(room)
            self.rooms.admit(address, room)
        except ProtocolError as exc:
            self._refuse(sid, address, exc)
        name = identity.name
        s = self.settings
        client = Client(
            name=name, room=room, seat=secrets.token_hex(6), address=address,
            identity=identity, messages=TokenBucket(s.message_rate, s.message_burst),
            typing=TokenBucket(5.0, 10),
        )
        if self.recovery.wants(auth):
            self.recovery.new_pid(sid)  # before the welcome, which carries an offset
        try:
            state = await self._enter(sid, client, room, resume)
            if sid in self.recovery.pid_of:
                await self._keep(self.recovery.opened, sid, client, state)
        except NameTaken as exc:
            self.recovery.pid_of.pop(sid, None)
            self._refuse(sid, address, exc)
        except BaseException:
            self.recovery.pid_of.pop(sid, None)
            await self.presence.leave(client.seat)
            raise
        # Registered last: if anything above failed, nothing is left behind.
        self.clients[sid] = client
        self.metrics.connected.inc()
        self.log.info("connect %s name=%r user=%s room=%r from %s%s", sid, name,
                      identity.user, room, address, " (resuming)" if resume else "")

    def _refuse(self, sid, address, exc: Exception):
        self.log.info("refused %s from %s: %s", sid, address, exc)
        raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None

    async def on_disconnect(self, sid, reason=None):
        client = self.clients.pop(sid, None)
        if client is None:
            return
        self.metrics.connected.dec()
        self.server.manager.holdback.pop(sid, None)
        self.log.info("disconnect %s name=%r (%s)", sid, client.name, reason)
        try:
            if await self.recovery.closed(sid, reason):
                return  # parked: its seat stays while its client may come back
        except (OSError, RedisError) as exc:
            self.log.debug("recovery: cannot park %s: %s", sid, exc)
        await self.presence.leave(client.seat)

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
            mid = message_id(payload)
        except ProtocolError as exc:
            self.metrics.rejected.inc()
            return refusal(str(exc))
        message = chat_message(room=client.room, name=client.name, text=text,
                               server=self.settings.server_id, id=mid)
        return await self.post(client.room, message)

    async def post(self, room: str, message: dict) -> dict:
        """Store ``message`` in ``room``'s history, relay it, and return the
        sender's ack.  Every way into the chat (a socket's ``message``, the
        HTTP API) posts through here, so all get the same numbering,
        idempotency and answers."""
        # "ana joined" before ana's words: presence changes go out first (in
        # pubsub mode the append below publishes the message itself).
        await self.presence.flush(room)
        try:
            message = await self.history.append(room, message)
        except HistoryUnavailable as exc:
            # Not stored means not numbered: nobody gets it, and the sender
            # is told so and may send it again.
            self.metrics.rejected.inc()
            self.metrics.history_failures.inc()
            if isinstance(exc, HistoryRefused):
                self.storage_log.warning("history: Redis refused a message: %s", exc)
                return refusal(f"not sent: {exc}", id=message["id"])
            return refusal(NOT_SENT, id=message["id"])
        except HistoryUncertain as exc:
            # Redis may run it yet (a stall): then the other replicas read it
            # from the history, and the sender's retry with the same id
            # finds it there instead of storing it twice.
            self.metrics.history_failures.inc()
            self.storage_log.warning("history: no answer storing a message: %s", exc)
            # Not relayed: the catch-up reads it from the history if it stays.
            text = NOT_REPLICATED.format(exc) if isinstance(exc, HistoryNotReplicated) else UNKNOWN
            return refusal(text, id=message["id"], unknown=True)
        if message.pop("duplicate", False):
            # A retry of a message stored before: answer as the first time;
            # it was relayed then, or the replicas' catch-up reads it.
            return {"ok": True, "id": message["id"], "seq": message["seq"], "duplicate": True}
        self.metrics.accepted.inc()
        # If the relay fails the message is still stored, so not lost: the
        # other replicas read it from the history within a second
        # (Sequencer.catch_up).  When the history relayed it already (pubsub
        # mode: one round trip), only this replica's sockets are left.
        with contextlib.suppress(BackplaneUnavailable):
            await self.emit("message", message, room=room,
                            ignore_queue=self.history.relays)
        return {"ok": True, "id": message["id"], "seq": message["seq"]}

    async def on_join(self, sid, payload):
        client = self.clients[sid]
        try:
            if not client.messages.take():
                raise ProtocolError(TOO_MANY)
            room = room_of(payload)
            resume = parse_resume(payload.get("resume")) if isinstance(payload, dict) else None
            client.identity.may_enter(room)
            if room != client.room:
                self.rooms.admit(client.address, room)
        except ProtocolError as exc:
            return refusal(str(exc))
        old = client.room
        if room == old:  # nothing changes, and the answer has the same form
            return {"ok": True, "room": room, **await self._room_state(room, resume)}
        await self.leave_room(sid, old)
        await self.presence.leave(client.seat)
        try:
            state = await self._enter(sid, client, room, resume)
        except Exception as exc:
            # Back where it was, so that the refusal below is the whole truth.
            if not isinstance(exc, NameTaken):
                self.log.exception("join %s %r -> %r failed", sid, old, room)
            await self.leave_room(sid, room)
            await self.presence.leave(client.seat)
            await self._enter(sid, client, old, None)
            why = f"{exc}" if isinstance(exc, NameTaken) else f"could not join {room!r}"
            return refusal(f"{why}: you are still in {old!r}")
        self.log.info("join %s name=%r %r -> %r", sid, client.name, old, room)
        await self._keep(self.recovery.moved, sid, client, state)
        return {"ok": True, "room": room, **state}

    async def on_history(self, sid, payload):
        """Send a client the messages after a number it names (it saw a jump)."""
        client = self.clients[sid]
        try:
            if not client.messages.take():
                raise ProtocolError(TOO_MANY)
            after = history_after(payload)
        except ProtocolError as exc:
            return refusal(str(exc))
        epoch = payload.get("epoch")
        try:
            piece = await self.history.since(client.room, after, self.settings.history_length)
        except HistoryUnavailable:
            self.metrics.history_failures.inc()
            return refusal(NO_HISTORY)
        gap = resume_gap(piece, piece.epoch if epoch is None else epoch, after)
        # At most HISTORY_MAX_BYTES of messages: "truncated" tells the client
        # to ask again after the last one it got.
        messages = within(piece.messages, self.settings.history_max_bytes)
        return {"ok": True, "room": client.room, "epoch": piece.epoch, "seq": piece.last,
                "messages": messages, "gap": gap,
                "truncated": messages is not piece.messages}

    async def on_presence(self, sid, payload):
        client = self.clients[sid]
        if not client.messages.take():
            return refusal(TOO_MANY)
        people, online, connections = await self.presence.members(client.room)
        return {"ok": True, "room": client.room, "presence": people, "count": online,
                "connections": connections}

    async def on_typing(self, sid, payload):
        client = self.clients[sid]
        if not client.typing.take():
            return refusal("rate limit: too many typing events")
        try:
            typing = typing_flag(payload)
        except ProtocolError as exc:
            return refusal(str(exc))
        event = {"name": client.name, "room": client.room, "typing": typing}
        try:
            await self.emit("typing", event, room=client.room, skip_sid=sid)
        except BackplaneUnavailable:
            return refusal(LOCAL_ONLY)
        return {"ok": True}


def _address(environ) -> str:
    """The client's address as NGINX saw it (X-Real-IP), else the peer's.

    Not the first X-Forwarded-For entry: the client writes that one."""
    return environ.get("HTTP_X_REAL_IP") or environ.get("REMOTE_ADDR", "?")
