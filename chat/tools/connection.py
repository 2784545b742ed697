"""chat-client's connection: a :class:`~chat.tools.session.Session` that shows
the room's events (one line each, or JSON lines), notes on stderr when the
connection drops and comes back, sends messages with ids of its own (so an
"unknown" answer can be retried safely), and can reopen a session the
server ended.  ``client.py`` holds the command line and its three modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import deque

import aiohttp
import socketio

from .session import (
    RECONNECT_DELAY,
    RECONNECT_DELAY_MAX,
    ClientError,
    Session,
    printable,
    stderr_notes,
)

note = stderr_notes("chat-client")
UNKNOWN_RETRY_AFTER = 0.5  # seconds before a message answered "unknown" is sent again


def format_event(kind: str, event: dict) -> str:
    """One line for a ``message``, a ``presence`` change or a ``gap``."""
    clock = time.strftime("%H:%M:%S", time.localtime(event.get("ts", time.time() * 1000) / 1000))
    room = printable(event.get("room", "?"))
    if kind == "message":
        server = printable(event.get("server", "?"))
        text = printable(event.get("text", ""))
        return f"[{room}] {clock} {printable(event.get('name', '?'))}@{server}: {text}"
    if kind == "presence":
        parts = [f"{change}: " + ", ".join(sorted({printable(p.get("name", "?"))
                                                   for p in event[change]}))
                 for change in ("joined", "left") if event.get(change)]
        online = f" ({event['count']} online)" if isinstance(event.get("count"), int) else ""
        return f"[{room}] {clock} * {'; '.join(parts)}{online}"
    return f"[{room}] {clock} * {printable(event.get('reason', kind))}"


def format_json(kind: str, event: dict) -> str:
    return json.dumps({"type": kind, **event}, ensure_ascii=False)


# -- one connection -----------------------------------------------------------

class Connection(Session):
    """chat-client's session: shows the room's events, notes on stderr when
    the connection drops and when it comes back (naming the new replica),
    and can reopen a session the server ended."""

    def __init__(self, url: str, name: str, room: str, *, polling: bool,
                 http: aiohttp.ClientSession, reconnect: bool, show=None):
        super().__init__(url, name, room, http, reconnect=reconnect,
                         transports=["polling"] if polling else ["websocket"],
                         hint="try --polling")
        self.show = show
        self.gone = asyncio.Event()
        self.seen_ids: deque[str] = deque(maxlen=256)
        self.last_sent: str | None = None
        self.arrived = asyncio.Event()
        self.lost = False
        self.sio.on("presence", self._on_presence)

    def on_welcome(self, previous):
        # A welcome also follows a /join, on the same connection.
        if previous is not None and self.lost:
            change = f" (was {previous})" if self.server != previous else ""
            note(f"reconnected to {self.server}{change}")
        self.lost = False
        self.gone.clear()

    def on_lost(self, reason):
        self.lost = True
        if not self.server:
            return
        if reason == self.sio.reason.SERVER_DISCONNECT or not self.sio.reconnection:
            # python-socketio retries only after a transport failure; a
            # replica that shuts down politely ends the session instead.
            self.gone.set()
        if self.sio.reconnection:
            note(f"lost the connection to {self.server} ({reason}); reconnecting")

    def on_message(self, event):
        self.seen_ids.append(event.get("id"))
        self.arrived.set()
        if self.show:
            # History (what the room said before we came) is marked apart
            # from live messages.
            self.show("message", {**event, "history": True} if self.replaying else event)

    def on_gap(self, reason):
        note(f"gap in [{self.room}]: {reason}")
        if self.show:
            self.show("gap", {"room": self.room, "reason": reason})

    def _on_presence(self, event):
        if self.show and isinstance(event, dict) and (event.get("joined") or event.get("left")):
            self.show("presence", event)

    async def stay_connected(self) -> None:
        """Reopen the session whenever the server ends it; never returns."""
        while True:
            await self.gone.wait()
            # Give python-socketio a moment to finish closing the old session
            # (connect() refuses until it has), and the replica to go away.
            await asyncio.sleep(RECONNECT_DELAY)
            try:
                await self.open(retry=True)
            except (ClientError, ValueError) as exc:
                if asyncio.current_task().cancelling():
                    # python-socketio's retry loop swallows our cancellation.
                    raise asyncio.CancelledError from None
                note(f"{exc}; retrying")
                await asyncio.sleep(RECONNECT_DELAY_MAX)

    async def request(self, event: str, payload: dict, timeout: float):
        """Emit ``event`` and return its acknowledgement."""
        try:
            return await self.sio.call(event, payload, timeout=timeout)
        except socketio.exceptions.BadNamespaceError:
            raise ClientError("not connected (reconnecting); try again") from None
        except socketio.exceptions.TimeoutError:
            raise ClientError(f"no answer from {self.server} within {timeout:g} s") from None

    async def say(self, text: str, timeout: float):
        """Send a message to the room and return its acknowledgement.

        The message carries an id of our own, so when the server answers
        "unknown" (its storage did not answer in time) it is sent again,
        with the same id, until the answer is definite or time runs out:
        the server stores it at most once whatever happened to the first.
        """
        message = {"text": text, "id": secrets.token_hex(12)}
        deadline = time.monotonic() + timeout
        while True:
            ack = await self.request("message", message, max(0.1, deadline - time.monotonic()))
            if not (isinstance(ack, dict) and ack.get("unknown")):
                return ack
            if time.monotonic() + UNKNOWN_RETRY_AFTER >= deadline:
                return ack
            await asyncio.sleep(UNKNOWN_RETRY_AFTER)

    async def settle(self, timeout: float = 2.0) -> None:
        """Wait (a little) until the room has relayed our last message back.

        Through Redis our own message can arrive after its acknowledgement;
        leaving the room or the program first would drop it from the
        transcript.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.last_sent and self.last_sent not in self.seen_ids:
                    self.arrived.clear()
                    await self.arrived.wait()


@contextlib.asynccontextmanager
async def connected(args, *, reconnect: bool = False, show=None):
    """Yield an open :class:`Connection`; always close it and its HTTP session."""
    async with aiohttp.ClientSession() as http:
        conn = Connection(args.url, args.name, args.room, polling=args.polling,
                          http=http, reconnect=reconnect, show=show)
        try:
            await conn.open(args.timeout)
            yield conn
        finally:
            await conn.close()


def printer(as_json: bool):
    def show(kind: str, event: dict) -> None:
        line = format_json(kind, event) if as_json else format_event(kind, event)
        print(line, flush=True)
    return show
