"""What chat-bench and chat-chaos share as load generators: stamped messages,
sent on an open-loop schedule, and the wait for stragglers at the end.

A stamp is a message text of six words, ``bench1 RUN SENDER SEQ SENT_NS
PHASE``: the mark (chat-bench's, whose format chat-chaos shares), the run's
id, the sender's index, its sequence number, the send time in nanoseconds
(``time.time_ns()`` where it was sent), and ``w`` for a warm-up message that
is not measured or ``m`` for a measured one.  A receiver decodes the text
back and ignores every text that is not a stamp of its own run;
chat-bench's lean receivers instead find the stamp in the raw JSON of the
event (:class:`StampFinder`), without parsing it.

The schedule is open loop: a sender never waits for an earlier
acknowledgement, so a slow server shows up as latency and loss rather than
as a lower offered rate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

STAMP_MARK = "bench1"


@dataclasses.dataclass(frozen=True)
class Stamp:
    run_id: str
    sender: int
    seq: int
    sent_ns: int
    warmup: bool = False


def encode_stamp(stamp: Stamp) -> str:
    phase = "w" if stamp.warmup else "m"
    return f"{STAMP_MARK} {stamp.run_id} {stamp.sender} {stamp.seq} {stamp.sent_ns} {phase}"


def decode_stamp(text, run_id: str | None = None) -> Stamp | None:
    """The stamp in a message text, or None if the text is not one of ours
    (or belongs to another run when ``run_id`` is given)."""
    if not isinstance(text, str) or not text.startswith(STAMP_MARK):
        return None
    parts = text.split()
    if len(parts) != 6 or parts[0] != STAMP_MARK or parts[5] not in ("w", "m"):
        return None
    if run_id is not None and parts[1] != run_id:
        return None
    try:
        return Stamp(parts[1], int(parts[2]), int(parts[3]), int(parts[4]), parts[5] == "w")
    except ValueError:
        return None


class StampFinder:
    """Finds the stamp of one run in an event's raw JSON, without parsing it.

    A stamp is only ever a message's whole text, and the server writes JSON
    compactly, so a stamp that :func:`encode_stamp` wrote appears in the
    frame as ``"text":"bench1 RUN SENDER SEQ SENT_NS PHASE"``.  A JSON
    string value cannot contain an unescaped quote, so that pattern only
    matches the ``text`` key itself, whatever the order of the keys.  Called
    with a frame it returns the stamp, or None as :func:`decode_stamp` does
    for a text that is not a stamp of this run.
    """

    def __init__(self, run_id: str):
        self.run_id = run_id
        prefix = re.escape(f'"text":"{STAMP_MARK} {run_id} ')
        self._search = re.compile(prefix + r'([0-9]+) ([0-9]+) ([0-9]+) ([wm])"').search

    def __call__(self, raw: str) -> Stamp | None:
        found = self._search(raw)
        if found is None:
            return None
        sender, seq, sent_ns, phase = found.groups()
        return Stamp(self.run_id, int(sender), int(seq), int(sent_ns), phase == "w")


def send_times(start: float, rate: float, offset: float, end: float) -> Iterator[float]:
    """One sender's send instants: ``start + offset``, then every ``1/rate``
    seconds, up to (not including) ``end``.  Computed from the index, not by
    adding intervals, so rounding errors do not pile up."""
    n = 0
    while (due := start + offset + n / rate) < end:
        yield due
        n += 1


async def on_schedule(times: Iterable[float]) -> AsyncIterator[tuple[int, float, float]]:
    """``(seq, due, late)`` for each instant of ``times`` (monotonic seconds),
    once it is due; ``late`` is how many seconds after.  A sender stops by
    being cancelled."""
    for seq, due in enumerate(times):
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield seq, due, max(0.0, -delay)


async def until_quiet(last_activity: Callable[[], float], quiet: float, limit: float, *,
                      pending: Callable[[], int] = lambda: 0,
                      stop: Callable[[], bool] = lambda: False) -> None:
    """Wait until nothing has arrived for ``quiet`` seconds (``last_activity()``
    is a monotonic time) and nothing is ``pending()``; at most ``limit``
    seconds, and no longer once ``stop()``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not stop():
        if time.monotonic() - last_activity() >= quiet and pending() <= 0:
            return
        await asyncio.sleep(0.05)
