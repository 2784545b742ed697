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
import signal
import sys
import threading

from .connection import Connection, connected, printer
from .session import (
    URL_HELP,
    ClientError,
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
note = stderr_notes("chat-client")


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
