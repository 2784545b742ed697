"""chat-client: talk to the chat from a terminal or a script.

Three ways to use it::

    chat-client --name alice send hello everyone     # one message, exit 0 once acknowledged
    chat-client --name bob --room ops listen [--json]  # print the room until Ctrl-C
    chat-client --name carol [chat]                  # type lines; /join ROOM, /who, /help, /quit

Each connection adds a random ``sticky`` key to the URL, which NGINX hashes
to choose a replica (see :mod:`chat.tools.session`).  The key is kept across
reconnections; if its replica is gone NGINX picks another, and the client
says so on stderr.

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
import secrets
import signal
import sys
import threading
import time
from collections import deque

import aiohttp
import socketio

from .session import (
    RECONNECT_DELAY,
    RECONNECT_DELAY_MAX,
    URL_HELP,
    ClientError,
    Session,
    ack_error,
    default_url,
    http_url,
    printable,
    stderr_notes,
)

DEFAULT_ROOM = "general"
DEFAULT_TIMEOUT = 10.0
COMMANDS = ("/join ROOM: move to ROOM; /who: who is online here; /quit: leave; "
            "//text: send a line that starts with /")
UNKNOWN_RETRY_AFTER = 0.5  # seconds before a message answered "unknown" is sent again

note = stderr_notes("chat-client")


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


# -- the three modes ----------------------------------------------------------

async def send(args) -> int:
    text = " ".join(args.text)
    try:
        async with asyncio.timeout(args.timeout):
            async with connected(args) as conn:
                ack = await conn.say(text, args.timeout)
    except TimeoutError:
        raise ClientError(f"no answer from {args.url} within {args.timeout:g} s") from None
    error = ack_error(ack)
    if error:
        raise ClientError(f"message not accepted: {error}")
    print(f"sent to [{args.room}] as message {ack.get('seq')}", flush=True)
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
             "/help for commands")
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
    error: str | None = None
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
        elif line == "/who":
            ack = await conn.request("presence", {}, timeout)
            error = ack_error(ack)
            if not error:
                names = sorted({printable(p.get("name", "?")) for p in ack["presence"]})
                more = ack["count"] - len(ack["presence"])
                note(f"[{conn.room}] {ack['count']} online: {', '.join(names)}"
                     + (f" and {more} more" if more > 0 else ""))
        elif line == "/help":
            note(COMMANDS)
        elif line.startswith("/") and not line.startswith("//"):
            error = f"unknown command {line.split()[0]!r} (/help lists them)"
        else:
            ack = await conn.say(line.removeprefix("/"), timeout)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-client", description=__doc__.splitlines()[0],
        epilog="Without a command, chat interactively.")
    parser.add_argument("--url", type=http_url, default=None, help=URL_HELP)
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
    listen_parser = commands.add_parser(
        "listen", help="print the room's messages until interrupted")
    chat_parser = commands.add_parser(
        "chat", help="read lines from stdin and send them (the default)")
    for sub in (listen_parser, chat_parser):  # --json after the command, too
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="print room events as JSON lines")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = args.command or "chat"
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.url is None:
        try:
            args.url = default_url()
        except argparse.ArgumentTypeError as exc:
            parser.error(f"CHAT_URL: {exc}")
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:  # before the loop's own handler was in place
        return 0


if __name__ == "__main__":
    sys.exit(main())
