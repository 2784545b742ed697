"""chat-client: talk to the chat from a terminal or a script.

Three ways to use it::

    chat-client --name alice send hello everyone     # one message, exit 0 once acknowledged
    chat-client --name bob --room ops listen [--json]  # print the room until Ctrl-C
    chat-client --name carol [chat]                  # type lines; /join ROOM, /quit

Each connection adds a random ``sticky`` key to the URL's query string.  NGINX
hashes that key to choose a replica, so clients spread over the replicas while
every request of one long-polling session still reaches the same one.  The
key is kept across reconnections; if its replica is gone NGINX picks another,
and the client says so on stderr.

Output: room traffic goes to stdout, one line per event (or one JSON object
per line with ``--json``); the client's own notes and errors go to stderr,
prefixed ``chat-client:``.

Exit status: 0 on success (and when interrupted while listening or
chatting), 1 when the server cannot be reached, refuses the connection,
answers with an error or does not answer within ``--timeout``, 2 for bad
usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections import deque
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import socketio

DEFAULT_URL = "http://localhost:8080"
DEFAULT_ROOM = "general"
DEFAULT_TIMEOUT = 10.0
# Reconnect quickly: a replica that dies is replaced behind NGINX within
# seconds, and a listener should not miss more of the room than it must.
RECONNECT_DELAY = 0.5
RECONNECT_DELAY_MAX = 2.0


class ClientError(Exception):
    """A failure to show the user as one line on stderr."""


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


def format_event(kind: str, event: dict) -> str:
    """One line for a ``message`` or ``system`` event."""
    clock = time.strftime("%H:%M:%S", time.localtime(event.get("ts", 0) / 1000))
    room = printable(event.get("room", "?"))
    server = printable(event.get("server", "?"))
    text = printable(event.get("text", ""))
    if kind == "message":
        return f"[{room}] {clock} {printable(event.get('name', '?'))}@{server}: {text}"
    return f"[{room}] {clock} * {text} ({server})"


def format_json(kind: str, event: dict) -> str:
    return json.dumps({"type": kind, **event}, ensure_ascii=False)


def os_reason(error: OSError) -> str:
    if isinstance(error, socket.gaierror) or not error.errno:
        return error.strerror or str(error)
    return os.strerror(error.errno).lower()


async def diagnose(http: aiohttp.ClientSession, url: str, transports=("websocket",)) -> str:
    """Explain a failed Engine.IO handshake in a few words.

    python-socketio only says "Connection error", so ask the server the
    same question with a plain HTTP request and report what went wrong.
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
        return f"{url} answers but refused the WebSocket connection (try --polling)"
    return f"{url} answers but the Socket.IO handshake failed"


def note(text: str) -> None:
    print(f"chat-client: {text}", file=sys.stderr, flush=True)


# -- one connection -----------------------------------------------------------

class Connection:
    """One Socket.IO connection speaking the chat's handshake.

    It sends ``auth`` with the *current* room, so a reconnection lands back
    in the room the user last joined; keeps the latest ``welcome``; captures
    the reason of a refused connection; and notes on stderr when the
    connection drops and when it comes back (naming the new replica).
    """

    def __init__(self, url: str, name: str, room: str, *, polling: bool,
                 http: aiohttp.ClientSession, reconnect: bool, show=None):
        self.url = url
        self.name = name
        self.room = room
        self.transports = ["polling"] if polling else ["websocket"]
        self.http = http
        self.show = show
        self.server: str | None = None
        self.refusal: str | None = None
        self.welcomed = asyncio.Event()
        self.closing = False
        self.lost = False
        self.gone = asyncio.Event()
        self.key = secrets.token_hex(8)
        self.seen_ids: deque[str] = deque(maxlen=256)
        self.last_sent: str | None = None
        self.arrived = asyncio.Event()
        self.sio = socketio.AsyncClient(
            reconnection=reconnect,
            reconnection_delay=RECONNECT_DELAY,
            reconnection_delay_max=RECONNECT_DELAY_MAX,
            randomization_factor=0.25,
            handle_sigint=False,
            http_session=http,
        )
        self.sio.on("welcome", self._on_welcome)
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("message", self._on_message)
        self.sio.on("system", self._on_system)

    def _auth(self) -> dict:
        return {"name": self.name, "room": self.room}

    def _on_welcome(self, welcome):
        server = str(welcome.get("server", "?"))
        if self.lost:
            change = f" (was {self.server})" if server != self.server else ""
            note(f"reconnected to {server}{change}")
        self.server, self.room, self.lost = server, welcome.get("room", self.room), False
        self.welcomed.set()

    def _on_connect_error(self, data=None):
        self.refusal = refusal_reason(data)

    def _on_disconnect(self, reason=None):
        if self.closing or not self.server:
            return
        self.lost = True
        self.welcomed.clear()
        if reason == self.sio.reason.SERVER_DISCONNECT or not self.sio.reconnection:
            # python-socketio retries only after a transport failure; a
            # replica that shuts down politely ends the session instead.
            self.gone.set()
        if self.sio.reconnection:
            note(f"lost the connection to {self.server} ({reason}); reconnecting")

    def _on_message(self, event):
        self.seen_ids.append(event.get("id"))
        self.arrived.set()
        if self.show:
            self.show("message", event)

    def _on_system(self, event):
        if self.show:
            self.show("system", event)

    async def open(self, retry: bool = False) -> None:
        """Connect and wait for the welcome; raise ClientError saying why not.

        With ``retry``, keep trying (python-socketio's reconnection delays)
        until the server answers.
        """
        try:
            await self.sio.connect(sticky_url(self.url, self.key), auth=self._auth,
                                   transports=self.transports, wait_timeout=3600,
                                   retry=retry)
        except socketio.exceptions.ConnectionError:
            if self.sio.failed_namespaces:
                raise ClientError(f"{self.url} refused the connection: {self.refusal}") from None
            raise ClientError(await diagnose(self.http, self.url, self.transports)) from None
        await self.welcomed.wait()
        self.gone.clear()

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

    async def close(self) -> None:
        self.closing = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await self.sio.shutdown()


@contextlib.asynccontextmanager
async def connected(args, *, reconnect: bool = False, show=None):
    """Yield an open :class:`Connection`; always close it and its HTTP session."""
    async with aiohttp.ClientSession() as http:
        conn = Connection(args.url, args.name, args.room, polling=args.polling,
                          http=http, reconnect=reconnect, show=show)
        try:
            try:
                async with asyncio.timeout(args.timeout):
                    await conn.open()
            except TimeoutError:
                raise ClientError(f"no answer from {args.url} within {args.timeout:g} s") from None
            yield conn
        finally:
            await conn.close()


def printer(as_json: bool):
    def show(kind: str, event: dict) -> None:
        line = format_json(kind, event) if as_json else format_event(kind, event)
        print(line, flush=True)
    return show


# -- the three modes ----------------------------------------------------------

async def send(args) -> int:
    text = " ".join(args.text)
    try:
        async with asyncio.timeout(args.timeout):
            async with connected(args) as conn:
                ack = await conn.request("message", {"text": text}, args.timeout)
    except TimeoutError:
        raise ClientError(f"no answer from {args.url} within {args.timeout:g} s") from None
    error = ack_error(ack)
    if error:
        raise ClientError(f"message not accepted: {error}")
    return 0


async def listen(args) -> int:
    async with connected(args, reconnect=True, show=printer(args.json)) as conn:
        note(f"listening to [{conn.room}] on {conn.server} as {conn.name}")
        await conn.stay_connected()
    return 0


async def chat(args) -> int:
    lines = stdin_lines()
    async with connected(args, reconnect=True, show=printer(args.json)) as conn:
        note(f"in [{conn.room}] on {conn.server} as {conn.name}; "
             "/join ROOM to move, /quit to leave")
        keeper = asyncio.ensure_future(conn.stay_connected())
        try:
            while (line := await lines.get()) is not None and line.strip() != "/quit":
                await handle_line(conn, line.strip(), args.timeout)
            await conn.settle()
        finally:
            keeper.cancel()
    return 0


async def handle_line(conn: Connection, line: str, timeout: float) -> None:
    """Act on one typed line: a command, or a message for the room."""
    if not line:
        return
    try:
        if line.startswith("/join"):
            # Our last message is relayed to the room we are in when it
            # arrives; wait for it so the transcript keeps it.
            await conn.settle()
            room = line.removeprefix("/join").strip()
            ack = await conn.request("join", {"room": room}, timeout)
            error = ack_error(ack)
            if not error:
                conn.room = ack.get("room", room)
                note(f"now in [{conn.room}]")
        elif line.startswith("/") and not line.startswith("//"):
            error = f"unknown command {line.split()[0]!r} (try /join ROOM or /quit)"
        else:
            ack = await conn.request("message", {"text": line.removeprefix("/")}, timeout)
            error = ack_error(ack)
            if not error:
                conn.last_sent = ack.get("id")
    except ClientError as exc:
        error = str(exc)
    if error:
        note(f"! {error}")


def stdin_lines() -> asyncio.Queue:
    """Lines of stdin, then None at end of input.

    A thread does the reading: it works for terminals, pipes and files alike,
    and being a daemon it does not hold the process open after /quit.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def pump():
        with contextlib.suppress(RuntimeError):  # the loop may close first
            while line := sys.stdin.readline():
                loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\r\n"))
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return queue


# -- command line -------------------------------------------------------------

MODES = {"send": send, "listen": listen, "chat": chat}


def http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, not {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-client", description=__doc__.splitlines()[0],
        epilog="Without a command, chat interactively.")
    parser.add_argument("--url", type=http_url, default=DEFAULT_URL,
                        help=f"the chat's address (default {DEFAULT_URL}, the cluster's NGINX)")
    parser.add_argument("--name", required=True, help="your name, 1 to 32 characters")
    parser.add_argument("--room", default=DEFAULT_ROOM, help=f"room (default {DEFAULT_ROOM})")
    parser.add_argument("--polling", action="store_true",
                        help="use HTTP long-polling instead of a WebSocket")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for the server (default %(default)g)")
    parser.add_argument("--json", action="store_true",
                        help="print room events as JSON lines (listen and chat)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    send_parser = commands.add_parser("send", help="send one message and exit")
    send_parser.add_argument("text", nargs="+", help="the message")
    commands.add_parser("listen", help="print the room's messages until interrupted")
    commands.add_parser("chat", help="read lines from stdin and send them (the default)")
    return parser


async def run(args) -> int:
    """Run one mode until it ends; Ctrl-C or SIGTERM end it quietly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    mode = asyncio.ensure_future(MODES[args.command](args))
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({mode, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not mode.done():
        mode.cancel()
        # The mode closes its connection as it unwinds; do not wait forever.
        await asyncio.wait({mode}, timeout=5)
        return 130 if args.command == "send" else 0
    try:
        return mode.result()
    except ClientError as exc:
        note(str(exc))
        return 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.command = args.command or "chat"
    if args.timeout <= 0:
        build_parser().error("--timeout must be positive")
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:  # before the loop's own handler was in place
        return 0


if __name__ == "__main__":
    sys.exit(main())
