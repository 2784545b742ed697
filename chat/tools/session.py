"""One Socket.IO session with the chat, as chat-client, chat-bench and chat-chaos open it.

:class:`Session` speaks the chat's handshake.  It sends ``auth`` naming the
user and the *current* room, so a reconnection lands back in the room last
joined.  It adds a random ``sticky`` key to the URL's query string: NGINX
hashes that key to choose a replica, so clients spread over the replicas
while every request of one long-polling session still reaches the same one;
the key is kept across reconnections.  It keeps the replica named by the
latest ``welcome``, and turns a failed connection into one sentence: the
server's refusal, or what a plain HTTP request found (:func:`diagnose`).
Each command subclasses it to say what a welcome, a message and a lost
connection mean to it.

The end holds what the three commands share on the command line: the
default ``--url`` (:func:`default_url`), its check, notes on stderr and usage
errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import socketio

from ..cursor import Cursor

DEFAULT_URL = "http://localhost:8080"
# Where ``make up`` (chat-cluster) records the local cluster it runs.
CLUSTER_STATE = Path(__file__).resolve().parents[2] / ".run" / "cluster.json"
URL_HELP = ("the chat's address (default: $CHAT_URL, else the local cluster `make up` "
            f"runs, else {DEFAULT_URL})")
# Reconnect quickly: a replica that dies is replaced behind NGINX within
# seconds, and a listener should not miss more of the room than it must.
RECONNECT_DELAY = 0.5
RECONNECT_DELAY_MAX = 2.0
CLOSE_TIMEOUT = 5.0
# A history repair cut short by a reconnection is tried again after it.
REPAIR_ATTEMPTS = 3
REPAIR_WAIT = 15.0


class ClientError(Exception):
    """A failure to show the user as one line on stderr."""


class Unreachable(ClientError):
    """The Engine.IO handshake failed (as opposed to a refused login)."""


# -- pure helpers -------------------------------------------------------------

def sticky_url(url: str, key: str | None = None) -> str:
    """Return ``url`` with ``sticky=<key>`` added to its query string."""
    key = key or secrets.token_hex(8)
    parts = urlsplit(url)
    query = f"{parts.query}&sticky={key}" if parts.query else f"sticky={key}"
    return urlunsplit(parts._replace(query=query))


def refusal_reason(data) -> str:
    """The sentence inside a ``connect_error`` payload."""
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return str(data) if data else "no reason given"


def ack_error(ack) -> str | None:
    """None for an ``{"ok": true}`` acknowledgement, else the error to show."""
    if isinstance(ack, dict):
        if ack.get("ok"):
            return None
        if ack.get("error"):
            return str(ack["error"])
    return f"unexpected answer {ack!r}"


def printable(text) -> str:
    """Escape control characters, so one event stays one terminal line and
    nobody's message can move the cursor or recolour the screen."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def os_reason(error: OSError) -> str:
    if isinstance(error, socket.gaierror) or not error.errno:
        return error.strerror or str(error)
    return os.strerror(error.errno).lower()


async def diagnose(http: aiohttp.ClientSession, url: str,
                   transports: Sequence[str] = ("websocket",), hint: str = "") -> str:
    """Explain a failed Engine.IO handshake in a few words.

    python-socketio only says "Connection error", so ask the server the
    same question with a plain HTTP request and report what went wrong.
    ``hint`` (what the user could try instead) follows a refused WebSocket.
    """
    probe = urlunsplit(urlsplit(url)._replace(path="/socket.io/",
                                              query="EIO=4&transport=polling"))
    try:
        async with http.get(probe, timeout=aiohttp.ClientTimeout(total=3)) as response:
            status = response.status
    except aiohttp.ClientConnectorError as exc:
        return f"cannot reach {url}: {os_reason(exc.os_error)}"
    except (TimeoutError, aiohttp.ClientError) as exc:
        return f"cannot reach {url}: {printable(exc) or type(exc).__name__}"
    if status != 200:
        return f"{url} is not a chat server (HTTP {status} for {probe})"
    if "websocket" in transports:
        return f"{url} answers but refused the WebSocket connection" + (
            f" ({hint})" if hint else "")
    return f"{url} answers but the Socket.IO handshake failed"


# -- one session --------------------------------------------------------------

class Session:
    """One Socket.IO connection speaking the chat's handshake (see the module
    docstring); subclasses override :meth:`on_welcome`, :meth:`on_lost` and
    :meth:`on_message`."""

    def __init__(self, url: str, name: str, room: str, http: aiohttp.ClientSession, *,
                 reconnect: bool = False, transports: Sequence[str] = ("websocket",),
                 hint: str = ""):
        self.url = url
        self.name = name
        self.room = room
        self.http = http
        self.transports = list(transports)
        self.hint = hint
        self.key = secrets.token_hex(8)
        # Open mode: who this session is, the same across its reconnections
        # (chat/auth.py); with signed identities, the token ($CHAT_TOKEN).
        self.person_key = secrets.token_hex(16)
        self.token = os.environ.get("CHAT_TOKEN") or None
        self.server: str | None = None
        self.refusal: str | None = None
        self.closing = False
        self.welcomed = asyncio.Event()
        self.sio = socketio.AsyncClient(
            reconnection=reconnect, reconnection_delay=RECONNECT_DELAY,
            reconnection_delay_max=RECONNECT_DELAY_MAX,
            randomization_factor=0.25,  # python-socketio varies every delay by up to 25%
            handle_sigint=False, http_session=http,
            # aiohttp offers no permessage-deflate unless asked; say so.
            websocket_extra_options={"compress": 0})
        self.sio.on("welcome", self._on_welcome)
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("message", self._on_message)
        self.cursor = Cursor()
        self.replaying = False
        self._repairing: asyncio.Future | None = None

    def on_welcome(self, previous: str | None) -> None:
        """After every ``welcome``; ``previous`` is the replica this session
        was on before (None for the first welcome)."""

    def on_lost(self, reason) -> None:
        """The connection dropped, and not because of :meth:`close`."""

    def on_message(self, event) -> None:
        """A ``message`` of the room: each number once, in order, history
        included."""

    def on_gap(self, reason: str) -> None:
        """Some messages of the room cannot be shown (``reason`` says why)."""

    def _auth(self) -> dict:
        auth = {"name": self.name, "room": self.room, "key": self.person_key}
        if self.token:
            auth["token"] = self.token
        if (resume := self.cursor.resume()) is not None:
            auth["resume"] = resume
        return auth

    def _on_welcome(self, welcome):
        previous, self.server = self.server, str(welcome.get("server", "?"))
        room = welcome.get("room", self.room)
        history = welcome.get("history") or []
        if room != self.room or not welcome.get("resumed"):
            # A new room, a first connection, or a position the server could
            # not continue from: start where the history given starts.
            first = history[0]["seq"] - 1 if history else welcome.get("seq", 0)
            self.cursor.restart(welcome.get("epoch"), first)
        self.room = room
        if welcome.get("gap"):
            self.on_gap(str(welcome["gap"]))
        self.on_welcome(previous)
        self.replaying = True  # on_message: these come from the history
        try:
            for message in history:
                self._show(self.cursor.feed(message))
        finally:
            self.replaying = False
        if isinstance(welcome.get("seq"), int) and welcome.get("epoch") == self.cursor.epoch:
            self.cursor.seq = max(self.cursor.seq, welcome["seq"])
        self.welcomed.set()

    def _on_message(self, event):
        if not isinstance(event, dict) or event.get("room", self.room) != self.room:
            return  # another room's numbering (sent before a room change)
        self._show(self.cursor.feed(event))
        if self.cursor.behind and not self._repairing:
            self._repairing = asyncio.ensure_future(self._repair())

    def _show(self, messages: list[dict]) -> None:
        for message in messages:
            self.on_message(message)

    async def _repair(self) -> None:
        """A number was skipped: ask the server for what lies in between.

        A connection that drops meanwhile makes the ``history`` call fail
        (not connected, or no answer): then wait for the next welcome, whose
        resumed history may close the hole by itself, and ask again there.
        Only an answer from the server, or no connection for
        ``REPAIR_ATTEMPTS`` tries, makes the hole a gap.
        """
        try:
            await asyncio.sleep(0.2)  # it may still arrive on its own
            attempts = 0
            while self.cursor.behind and attempts < REPAIR_ATTEMPTS:
                try:
                    answer = await self.sio.call(
                        "history", {"after": self.cursor.seq, "epoch": self.cursor.epoch},
                        timeout=5)
                except socketio.exceptions.SocketIOError:
                    attempts += 1
                    await self._reconnected()
                    continue
                if not (isinstance(answer, dict) and answer.get("ok")):
                    break
                for message in answer.get("messages") or []:
                    self._show(self.cursor.feed(message))
                if answer.get("gap"):
                    self.on_gap(str(answer["gap"]))
                if not (answer.get("truncated") and answer.get("messages")):
                    break  # else: one answer carries a bounded part; ask after it
            if self.cursor.behind:
                self.on_gap("some messages could not be fetched")
                self._show(self.cursor.skip())
        finally:
            self._repairing = None

    async def _reconnected(self) -> None:
        """Wait (at most ``REPAIR_WAIT`` seconds) until connected and welcomed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPAIR_WAIT):
                while not self.closing and not (self.sio.connected and self.welcomed.is_set()):
                    await asyncio.sleep(0.1)

    def _on_connect_error(self, data=None):
        self.refusal = refusal_reason(data)

    def _on_disconnect(self, reason=None):
        if not self.closing:
            self.welcomed.clear()
            self.on_lost(reason)

    async def open(self, timeout: float | None = None, *, retry: bool = False,
                   explain: bool = True) -> None:
        """Connect and wait for the welcome; raise ClientError saying why not.

        ``timeout`` bounds the whole handshake.  With ``retry``, keep trying
        (python-socketio's reconnection delays) until the server answers.
        Without ``explain``, a failed handshake raises :class:`Unreachable`
        with just the URL: a caller with many sessions asks the server why once.
        """
        try:
            async with asyncio.timeout(timeout):
                try:
                    await self.sio.connect(sticky_url(self.url, self.key), auth=self._auth,
                                           transports=self.transports, retry=retry,
                                           wait_timeout=3600)  # ``timeout`` bounds it
                except socketio.exceptions.ConnectionError:
                    if self.sio.failed_namespaces:
                        raise ClientError(
                            f"{self.url} refused the connection: {self.refusal}") from None
                    reason = self.url if not explain else await diagnose(
                        self.http, self.url, self.transports, self.hint)
                    raise Unreachable(reason) from None
                await self.welcomed.wait()
        except TimeoutError:
            raise ClientError(f"no answer from {self.url} within {timeout:g} s") from None

    async def send_message(self, text: str, on_ack) -> bool:
        """Send ``text`` to the room without waiting for its acknowledgement
        (``on_ack`` gets it); False when not connected, so nothing left."""
        try:
            await self.sio.emit("message", {"text": text}, callback=on_ack)
        except socketio.exceptions.SocketIOError:
            return False
        return True

    async def close(self) -> None:
        self.closing = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.sio.shutdown()


# -- the command line ---------------------------------------------------------

def http_url(value: str) -> str:
    """The type of a ``--url`` argument: the chat's root, nothing more
    (Socket.IO's path is fixed, so a path would be silently ignored)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, not {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(
            f"expected the chat's root URL such as {DEFAULT_URL}, without a path or query, "
            f"not {value!r}")
    return value.rstrip("/")


def default_url(env=None) -> str:
    """``$CHAT_URL``; else the URL of the cluster ``make up`` runs here; else
    localhost:8080."""
    env = os.environ if env is None else env
    if env.get("CHAT_URL"):
        return http_url(env["CHAT_URL"])
    try:
        port = int(json.loads(CLUSTER_STATE.read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_URL
    return f"http://localhost:{port}"


def stderr_notes(prog: str) -> Callable[[str], None]:
    """A ``note(text)`` that prints one line for the user on stderr, after ``prog:``."""
    def note(text: str) -> None:
        print(f"{prog}: {text}", file=sys.stderr, flush=True)
    return note


def check_arguments(parser: argparse.ArgumentParser,
                    problems: Iterable[tuple[bool, str]]) -> None:
    """Exit with a usage error (status 2) for the first ``(failed, message)``
    that failed."""
    for failed, message in problems:
        if failed:
            parser.error(message)
