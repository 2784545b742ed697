"""How a connection enters a room: a welcome, or a session taken up again.

Three ways in, all through the room's line (``Sequencer.entering``), so that
what the client is sent from the history comes before any live message of
the room and reaches up to where live messages take over:

* a first connect or a ``join``: a ``welcome`` with the room's recent
  history, or with ``resume`` (the chat's own clients) exactly what the
  client missed, or a ``gap`` saying why not;
* a stock client coming back to its session (``recovery.py``): the same
  sid, seat and room, and what it missed as ordinary ``message`` events,
  each with its offset; no welcome, as Socket.IO's recovery expects.

``Entrance`` is a part of ``events.ChatNamespace``; it uses the namespace's
history, presence, sequencer and recovery.
"""

from __future__ import annotations

import contextlib
import dataclasses

from redis.exceptions import RedisError

from .auth import Identity
from .history import HistoryUnavailable, resume_gap
from .presence import NameTaken
from .protocol import ProtocolError, TokenBucket, within
from .recovery import Restored, offset

NO_HISTORY = "history unavailable: the chat's storage (Redis) does not answer"
TOO_MUCH_MISSED = "you missed more than one answer carries (HISTORY_MAX_BYTES)"


@dataclasses.dataclass(slots=True)
class Client:
    name: str
    room: str
    seat: str  # this connection's presence id: random, unlike the sid never shown
    address: str  # who to count its new rooms against (rooms.py)
    identity: Identity  # the person: user id, name, allowed rooms
    messages: TokenBucket
    typing: TokenBucket



class Entrance:
    """The namespace's ways into a room (see the module's docstring)."""

    def admits(self, record: dict, auth) -> bool:
        """Whether this CONNECT may take up the session ``record`` holds
        (asked before it is claimed).  With signed identities its token must
        still admit the same user into the same room: a recovery is no way
        around an expiry, and no way into another user's session."""
        if self.identities.open:
            return True  # the pid is the proof, as with Socket.IO's own
        try:
            if not isinstance(auth, dict):
                return False
            identity = self.identities.identify(auth)
            identity.may_enter(record["room"])
        except ProtocolError:
            return False
        return identity.user == record["user"]

    async def _resume(self, sid, restored: Restored, address: str) -> bool:
        """Resume a session a stock client came back for (``recovery.py``):
        its identity, room and presence seat as they were, and the messages
        it missed, in order, before any live one; no welcome.  False: it
        cannot be (the caller starts a fresh session)."""
        record = restored.record
        rooms = record["rooms"]
        s = self.settings
        client = Client(
            name=record["name"], room=record["room"], seat=record["seat"], address=address,
            identity=Identity(record["user"], record["name"], record["fold"],
                              None if rooms is None else frozenset(rooms)),
            messages=TokenBucket(s.message_rate, s.message_burst), typing=TokenBucket(5.0, 10))
        try:
            missed = await self._replay(sid, client, restored.position)
        except NameTaken:
            missed = None
        except BaseException:
            with contextlib.suppress(Exception):  # nothing claimed stays behind
                await self.recovery.abandon(restored, sid)
            raise
        if missed is None:
            await self.recovery.abandon(restored, sid)
            return False
        self.clients[sid] = client
        self.metrics.connected.inc()
        self.log.info("connect %s name=%r user=%s room=%r from %s (recovered, %d missed)",
                      sid, client.name, client.identity.user, client.room, address, missed)
        return True

    async def _replay(self, sid, client: Client, position: tuple[str, int]) -> int | None:
        """Seat ``client`` again and send it what its room said after
        ``position``; the number of messages, or None when the history no
        longer holds them all (or not within HISTORY_MAX_BYTES)."""
        who, room = client.identity, client.room
        # The same seat: a person still (or again) there is not announced.
        await self.presence.enter(room, client.seat, who.user, who.name, who.fold,
                                  ttl=self.recovery.seat_ttl)
        epoch, after = position
        async with self.sequencer.entering(room) as start:
            try:
                piece = await self.history.since(room, after, self.settings.history_length)
            except HistoryUnavailable:
                return None
            if (resume_gap(piece, epoch, after) is not None
                    or within(piece.messages, self.settings.history_max_bytes)
                    is not piece.messages):
                return None
            # The line writes what comes after where it stands to every
            # member: the replay stops there, and when the line is behind
            # what the client saw, the client skips the line's next ones.
            line_epoch, line_seq = start(piece.epoch, piece.last)
            if line_epoch != piece.epoch:
                return None
            missed = [m for m in piece.messages if m["seq"] <= line_seq]
            if line_seq < after:
                self.server.manager.holdback[sid] = (epoch, after)
            await self.enter_room(sid, room)
            for message in missed:
                await self.emit("message", (message, offset(message)), to=sid,
                                ignore_queue=True)
        return len(missed)

    async def _keep(self, write, sid, client: Client, state: dict) -> None:
        """Write a session's record (``recovery.opened`` / ``moved``): the
        connection goes on without it if Redis does not answer."""
        who = client.identity
        record = {"sid": sid, "seat": client.seat, "user": who.user, "name": who.name,
                  "fold": who.fold, "rooms": None if who.rooms is None else sorted(who.rooms),
                  "room": client.room, "epoch": state["epoch"], "seq": state["seq"],
                  "address": client.address}
        try:
            await write(sid, record)
        except (OSError, RedisError) as exc:
            self.log.debug("recovery: session of %s not kept: %s", sid, exc)

    async def _enter(self, sid, client: Client, room: str, resume) -> dict:
        """Put ``client`` in ``room`` and send it the room's welcome.

        Inside the room's line (``Sequencer.entering``) the history is read,
        the socket joins the room and the welcome is written, so the welcome
        comes before any live message of the room and the history it
        carries reaches up to where live messages take over.
        """
        who = client.identity
        await self.presence.enter(room, client.seat, who.user, who.name, who.fold,
                                  ttl=self.recovery.seat_ttl if sid in self.recovery.pid_of
                                  else None)
        people, online, connections = await self.presence.members(room)
        async with self.sequencer.entering(room) as start:
            state = await self._room_state(room, resume)
            start(state["epoch"], state["seq"])
            await self.enter_room(sid, room)
            client.room = room
            s = self.settings
            welcome = {
                "server": s.server_id, "mode": s.mode, "sid": sid, "name": client.name,
                "id": who.user, "room": room, "max_message_length": s.max_message_length,
                **state, "presence": people, "presence_count": online,
                "presence_connections": connections,
            }
            # The client is on this replica: no need to cross the backplane.
            # A client that asked for recovery offsets gets where it starts.
            if sid in self.recovery.pid_of and state["epoch"] is not None:
                welcome = (welcome, offset(state))
            await self.emit("welcome", welcome, to=sid, ignore_queue=True)
        return state

    async def _room_state(self, room: str, resume) -> dict:
        """The history a client entering ``room`` gets.

        Without ``resume``: the last ``HISTORY_ON_JOIN`` messages.  With it:
        every message after the client's position, or, when the history no
        longer reaches back that far, the last messages and a ``gap``.
        """
        s = self.settings
        gap = None
        try:
            if resume is not None:
                epoch, after = resume
                piece = await self.history.since(room, after, s.history_length)
                gap = resume_gap(piece, epoch, after)
                if gap is None and within(piece.messages, s.history_max_bytes) is piece.messages:
                    return {"epoch": piece.epoch, "seq": piece.last,
                            "history": piece.messages, "resumed": True, "gap": None}
                gap = gap or TOO_MUCH_MISSED
            piece = await self.history.tail(room, s.history_on_join)
        except HistoryUnavailable as exc:
            self.metrics.history_failures.inc()
            self.log.warning("history of %r unavailable: %s", room, exc)
            return {"epoch": None, "seq": 0, "history": [], "resumed": False,
                    "gap": NO_HISTORY}
        return {"epoch": piece.epoch, "seq": piece.last, "resumed": False, "gap": gap,
                "history": within(piece.messages, s.history_max_bytes, newest=True)}
