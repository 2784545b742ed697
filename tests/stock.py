"""The official socket.io-client, from a test: a Node process per client.

``tests/stock_client.js`` runs the client the page ships (socket.io-client
from ``node_modules``, the version ``package.json`` pins) and speaks
line-delimited JSON on its stdin and stdout.  :class:`StockClient` writes
its commands and keeps every line it prints, in order: ``connect`` (with
the client's own ``socket.recovered`` and the ``pid`` it stored),
every server event with all of its arguments exactly as the client's
handler got them (so an offset appended to ``message`` shows), and
``disconnect``.  Tests read those records; nothing here repairs or filters.
:func:`talking` keeps a room busy with a Python sender's acked messages;
:func:`on_the_wire`, :func:`flicker` and :func:`judge` turn the records, and a
watcher's presence events, into the outcome a test compares with a promise.

The ``stock`` fixture (``test_recovery.py``) starts clients and stops every
process by its PID after the test, whatever the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import time
from pathlib import Path

import pytest
from wire import keep_sending

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).with_name("stock_client.js")
CLIENT = ROOT / "node_modules" / "socket.io-client" / "package.json"
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def need_node() -> str:
    """``node``, or skip (fail in CI) when it or the npm install is missing."""
    node = shutil.which("node")
    if node is None or not CLIENT.exists():
        why = "node and node_modules/socket.io-client (make install) are needed"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    return node


class StockClient:
    """One official client in a Node process; ``lines`` is all it printed."""

    def __init__(self, name: str, log: Path):
        self.name = name
        self.key = secrets.token_hex(16)  # the same person across reconnections
        self.sticky = secrets.token_hex(8)
        self.log = log
        self.lines: list[dict] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self._refs = 0

    async def start(self) -> StockClient:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                need_node(), str(SCRIPT), cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=err)
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        async for raw in self.proc.stdout:
            line = json.loads(raw)
            line["t"] = time.monotonic()  # when the test heard of it
            self.lines.append(line)
            self._changed.set()

    def command(self, cmd: str, **fields) -> None:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")

    async def until(self, predicate, timeout: float = 10.0, what: str = "condition"):
        """Wait until ``predicate()`` is true; fail the test on timeout."""
        async def loop():
            while not (result := predicate()):
                if self.proc.returncode is not None:
                    pytest.fail(f"{self.name}: node exited {self.proc.returncode} (see {self.log})")
                self._changed.clear()
                await self._changed.wait()
            return result
        try:
            return await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            pytest.fail(f"{self.name}: {what} not within {timeout} s; "
                        f"last lines {self.lines[-3:]}")

    # -- commands ------------------------------------------------------------
    async def connect(self, url: str, room: str, recovery: bool = True,
                      transports=("websocket",), pid: str | None = None,
                      offset: str | None = None, auth: dict | None = None) -> dict:
        """Connect; return the ``connect`` record (or fail on a refusal).
        ``pid``/``offset``: present a session this client never held."""
        auth = auth or {"name": self.name, "key": self.key, "room": room}
        if recovery:
            auth = {**auth, "recovery": True}
        self.command("connect", url=url, sticky=self.sticky, auth=auth,
                     transports=list(transports), pid=pid, offset=offset)
        await self.until(lambda: self.of("connect") or self.of("connect_error"), 10, "connect")
        if self.of("connect_error"):
            pytest.fail(f"{self.name}: refused: {self.of('connect_error')[-1]}")
        return self.of("connect")[-1]

    async def send(self, text: str, mid: str | None = None) -> dict:
        """Emit ``message`` and return its ack (``{"ok", "id", "seq"}``)."""
        self._refs += 1
        ref = self._refs
        payload = {"text": text, **({"id": mid} if mid else {})}
        self.command("emit", ref=ref, event="message", args=[payload])
        acks = await self.until(lambda: [a for a in self.of("ack") if a["ref"] == ref],
                                10, f"ack {ref}")
        assert acks[0]["error"] is None, acks[0]
        return acks[0]["args"][0]

    async def state(self) -> dict:
        count = len(self.of("state"))
        self.command("state")
        await self.until(lambda: len(self.of("state")) > count, 5, "state")
        return self.of("state")[-1]

    async def go_away(self) -> None:
        """Cut the transport without a Socket.IO DISCONNECT, and stay away."""
        count = len(self.of("disconnect"))
        self.command("pause")
        self.command("close-transport")
        await self.until(lambda: len(self.of("disconnect")) > count, 5, "disconnect")

    async def come_back(self) -> dict:
        """Reconnect now (with whatever pid and offset the client holds)."""
        count = len(self.of("connect"))
        self.command("resume")
        await self.until(lambda: len(self.of("connect")) > count, 10, "reconnect")
        return self.of("connect")[-1]

    # -- what it saw ---------------------------------------------------------
    def of(self, kind: str) -> list[dict]:
        return [line for line in self.lines if line["type"] == kind]

    def events(self, name: str) -> list[list]:
        """Every ``name`` event's arguments, in the order the handler got them."""
        return [line["args"] for line in self.of("event") if line["name"] == name]

    def seqs(self, room: str) -> list[int]:
        """The ``seq`` of every ``message`` event of ``room``, as received."""
        return [args[0]["seq"] for args in self.events("message")
                if args and isinstance(args[0], dict) and args[0].get("room") == room]

    def server(self) -> str:
        """The replica that sent the last ``welcome``."""
        return self.events("welcome")[-1][0]["server"]

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 3)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()  # this process, by its PID
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


# -- a room that keeps talking -----------------------------------------------
async def within(check, timeout: float) -> bool:
    """Poll ``check()`` every 50 ms for at most ``timeout`` s; whether it held
    (for what a test judges rather than waits for)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def until(check, timeout: float, what: str) -> None:
    """Poll ``check()`` every 50 ms; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def talking(sender, prefix: str):
    """``sender`` posts acked messages every 50 ms for the block's length;
    yields the ``(time, ack)`` list."""
    acks: list = []
    stop = asyncio.Event()
    task = asyncio.ensure_future(keep_sending(sender, prefix, acks, stop, every=0.05))
    try:
        yield acks
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def ok_seqs(acks) -> list[int]:
    return [ack["seq"] for _, ack in acks if ack.get("ok")]


async def more_acks(acks, count: int, what: str) -> None:
    already = len(ok_seqs(acks))
    await until(lambda: len(ok_seqs(acks)) >= already + count, 10, what)


# -- judging what was seen ----------------------------------------------------
def flicker(watcher, name: str, since: int) -> list[str]:
    """``joined``/``left`` entries naming ``name`` in ``watcher``'s presence
    events after the first ``since`` of them, in order."""
    return [change for event in watcher.presence[since:] for change in ("joined", "left")
            if any(p["name"] == name for p in event[change])]


def on_the_wire(client: StockClient, room: str, acked: list[int]) -> dict:
    """What the client's ``message`` handler saw of ``room``, judged."""
    seqs = client.seqs(room)
    pairs = list(itertools.pairwise(seqs))
    return {
        "acked but never received": sorted(set(acked) - set(seqs))[:10],
        "repeated or backwards": [b for a, b in pairs if b <= a][:10],
        "holes after": [a for a, b in pairs if b > a + 1][:10],
        # An opted-in client's welcome and messages end with the offset.
        "events without an offset": sum(
            1 for args in client.events("message") + client.events("welcome")
            if len(args) != 2 or not isinstance(args[-1], str)),
    }


def judge(outcome: dict, promise: dict) -> None:
    """Assert ``outcome == promise``, naming every difference at once."""
    __tracebackhide__ = True  # the failure is the test's line, not this one
    differences = [f"{key}: got {outcome.get(key)!r}, promised {value!r}"
                   for key, value in promise.items() if outcome.get(key) != value]
    assert outcome == promise, "\n".join(differences)
