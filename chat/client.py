"""chat-client: talk to the chat from a terminal or a script.

Three ways to use it::

    chat-client --name alice send hello everyone     # one message, exit 0 once acknowledged
    chat-client --name bob --room ops listen [--json]  # print the room until Ctrl-C
    chat-client --name carol [chat]                  # type lines; /join ROOM, /quit

Each connection adds a random ``sticky`` key to the URL, which NGINX hashes
to choose a replica (see :mod:`chat.session`).  The key is kept across
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
import signal
import sys
import threading
import time
from collections import deque

import aiohttp
import socketio

from .session import (
    DEFAULT_URL,
    RECONNECT_DELAY,
    RECONNECT_DELAY_MAX,
    ClientError,
    Session,
    ack_error,
    http_url,
    printable,
    stderr_notes,
)

DEFAULT_ROOM = "general"
DEFAULT_TIMEOUT = 10.0

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
        self.sio.on("presence", self._on_presence)

    def on_welcome(self, previous):
        if previous is not None:
            change = f" (was {previous})" if self.server != previous else ""
            note(f"reconnected to {self.server}{change}")
        self.gone.clear()

    def on_lost(self, reason):
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
            self.show("message", event)

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
