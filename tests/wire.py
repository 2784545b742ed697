"""A reader that records what came off the wire, before the client repairs it.

:class:`chat.tools.session.Session` (the code chat-client, chat-chaos and
chat-bench read with) hides a replica's faults on purpose: its Cursor drops
repeated numbers and it asks ``history`` for the numbers a jump skipped.  A
test that only looks at what a Session hands on cannot tell a healthy
replica from one that drops or repeats messages and lets the client clean
up.  So :class:`Reader` is a Session that also keeps, per connection, the
``welcome`` it got and every ``message`` event exactly as it arrived, and
:func:`wire_faults` judges those alone:

* within one connection, the ``message`` events of the room must carry
  consecutive numbers (the replica's Sequencer writes each number once, in
  order, holes filled from history before it writes on), starting no later
  than right after the welcome's last number;
* :func:`on_the_wire` is every number the replica itself sent (welcome
  histories and ``message`` events), the client's ``history`` repairs left
  out, so a test can check that every acknowledged number is in it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import aiohttp
import pytest

from chat.tools.session import Session


@dataclasses.dataclass
class Connection:
    """One welcome and the room's ``message`` events that followed it."""

    room: str
    welcome_last: int  # the welcome's ``seq``: the room's latest number then
    history: list[int]
    live: list[int] = dataclasses.field(default_factory=list)


def wire_faults(connections: list[Connection]) -> tuple[int, int]:
    """``(repeats, holes)`` in the live messages of each connection: numbers
    written twice (or backwards) and numbers skipped, counted one by one."""
    repeats = holes = 0
    for conn in connections:
        previous = None
        for seq in conn.live:
            if previous is None:
                # The first live number may overlap the welcome's history
                # (the client drops those by number) but not jump past it.
                holes += max(0, seq - conn.welcome_last - 1)
            elif seq <= previous:
                repeats += 1
                continue
            else:
                holes += seq - previous - 1
            previous = seq
    return repeats, holes


class Reader(Session):
    """A reconnecting session that records every message it is handed
    (``seqs``, ``texts``) and, separately, what the replicas sent it."""

    def __init__(self, url, name, room, http):
        super().__init__(url, name, room, http, reconnect=True)
        self.seqs: list[int] = []
        self.texts: list[str] = []
        self.connections: list[Connection] = []
        self.gaps: list[str] = []
        self.servers: list[str] = []
        self.last_event: dict | None = None
        self.changed = asyncio.Event()

    def _on_welcome(self, welcome):
        self.connections.append(Connection(
            welcome.get("room", self.room), welcome.get("seq", 0),
            [m["seq"] for m in welcome.get("history") or []]))
        super()._on_welcome(welcome)

    def _on_message(self, event):
        self.last_event = event
        if self.connections and isinstance(event, dict):
            conn = self.connections[-1]
            if event.get("room", conn.room) == conn.room:
                conn.live.append(event.get("seq"))
        super()._on_message(event)

    def on_welcome(self, previous):
        self.servers.append(self.server)

    def on_message(self, event):
        self.seqs.append(event["seq"])
        self.texts.append(event["text"])
        self.changed.set()

    def on_gap(self, reason):
        self.gaps.append(reason)

    def wire(self) -> tuple[int, int]:
        """``(repeats, holes)`` on the wire (see :func:`wire_faults`)."""
        return wire_faults(self.connections)

    def on_the_wire(self) -> set[int]:
        return {seq for c in self.connections for seq in (*c.history, *c.live)}

    async def until(self, predicate, timeout: float = 10.0) -> None:
        async def loop():
            while not predicate():
                self.changed.clear()
                await self.changed.wait()
        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            pytest.fail(f"{self.name}: not within {timeout} s (last seqs {self.seqs[-5:]})")


def check_wire(readers: list[Reader], acked: list[int]) -> None:
    """No repeat and no hole on any reader's wire, and every acknowledged
    number sent to every reader by a replica (not fetched by the client)."""
    expected = set(acked)
    for reader in readers:
        repeats, holes = reader.wire()
        missing = sorted(expected - reader.on_the_wire())
        assert (repeats, holes, missing[:10]) == (0, 0, []), (
            f"{reader.name}: {repeats} repeats, {holes} holes on the wire; "
            f"{len(missing)} acked numbers never sent to it")


class Stream:
    """Senders that keep a room busy (one message every ``every`` seconds
    each) until stopped; ``acked`` holds the numbers Redis gave them."""

    def __init__(self, senders, every: float = 0.01):
        self.senders = senders
        self.every = every
        self.acked: list[int] = []
        self.refused: list[str] = []
        self.stopped = False
        self._tasks: list[asyncio.Task] = []

    async def _run(self, sender):
        n = 0
        # Stopped by a flag as well as by cancelling: asyncio.wait_for (in
        # the client's call) can swallow a cancellation that meets its
        # answer, and this loop would then talk on forever.
        while not self.stopped:
            n += 1
            try:
                ack = await sender.send(f"{sender.name} {n}", timeout=5)
            except Exception as exc:  # counted; the test decides
                self.refused.append(repr(exc))
            else:
                if ack.get("ok"):
                    self.acked.append(ack["seq"])
                else:
                    self.refused.append(ack["error"])
            await asyncio.sleep(self.every)

    def __enter__(self):
        self._tasks = [asyncio.ensure_future(self._run(s)) for s in self.senders]
        return self

    def __exit__(self, *exc):
        self.stopped = True
        for task in self._tasks:
            task.cancel()

    async def stop(self):
        self.__exit__()
        _, pending = await asyncio.wait(self._tasks, timeout=15) if self._tasks else ((), ())
        if pending:  # a send that ignores its cancellation: say so, do not hang
            pytest.fail(f"{len(pending)} sender tasks still running 15 s after stop()")


def contiguous(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True


async def metric(url: str, name: str) -> float:
    """A replica's counter, summed over its labels (0 when absent)."""
    timeout = aiohttp.ClientTimeout(total=10)  # a replica that does not answer fails the test
    async with aiohttp.ClientSession(timeout=timeout) as http, \
            http.get(f"{url}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))


async def keep_sending(sender, prefix: str, acks: list, stop: asyncio.Event,
                       every: float = 0.12) -> None:
    """Send ``m1``, ``m2``... (ids ``prefix-000001``...) through ``sender`` (a
    ``ChatClient``) until ``stop``, one every ``every`` seconds (within
    MESSAGE_RATE); each ack goes to ``acks`` as ``(time.monotonic(), ack)``,
    and a send with no answer as ``{"ok": False, "error": "no ack"}``."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            ack = await sender.sio.call("message", {"text": f"m{n}", "id": f"{prefix}-{n:06}"},
                                        timeout=5)
        except TimeoutError:
            ack = {"ok": False, "error": "no ack"}
        acks.append((time.monotonic(), ack))
        await asyncio.sleep(every)
