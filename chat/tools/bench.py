"""chat-bench: an open-loop load generator that measures end-to-end delivery.

How a run goes:

1. **Plan.**  Client ``i`` of ``--clients`` joins room ``i mod --rooms``,
   connects to one of the ``--url`` values (spread so every room has members
   on every URL) and belongs to worker process ``i mod --processes``.  The
   first ``--senders`` clients also send.
2. **Connect.**  Each worker process opens its clients (WebSocket only, one
   shared aiohttp session) and waits for every ``welcome``, noting the
   replica each client landed on, then reports ready.  Senders are
   python-socketio clients (they need acknowledgements); the clients that
   only receive are lean (:class:`chat.tools.wire.LeanSession`: a few frames
   spoken by hand, message payloads searched for their stamp instead of
   parsed), so that the generator's CPU goes to measuring rather than to
   decoding.  ``--full-clients`` makes every client a python-socketio one.
3. **Send.**  When all workers are ready the parent names a start instant.
   Every sender sends on a fixed schedule, ``--rate`` messages per second,
   staggered so the senders do not fire together.  The schedule is open loop:
   a send never waits for an earlier acknowledgement, so a slow server shows
   up as latency and loss rather than as a lower offered rate.
4. **Measure.**  Each text carries a stamp (:mod:`chat.tools.load`): run id,
   sender, sequence number, send time in nanoseconds and whether it was sent
   during the ``--warmup``.  Receivers turn the stamps of measured messages
   into end-to-end latency: the send time and the arrival time both come
   from the generator's clock (``time.time_ns()``, one machine), never from
   a server's.
5. **Drain and report.**  After the last send, workers wait until deliveries
   and acknowledgements stop arriving (at most ``--drain`` seconds),
   disconnect, and hand their tallies to the parent, which merges them and
   prints a table (or one JSON object with ``--json``).

Pure pieces (the plan, percentiles, merging and the report here; stamps
and the schedule in :mod:`chat.tools.load`) are plain functions and dataclasses,
tested without a server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import queue
import resource
import secrets
import signal
import sys
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence

import aiohttp

try:
    import uvloop
except ImportError:  # not on Windows
    uvloop = None

from ..settings import Settings
from .load import (
    Stamp,
    StampFinder,
    decode_stamp,
    encode_stamp,
    on_schedule,
    send_times,
    until_quiet,
)
from .session import (
    URL_HELP,
    ClientError,
    Session,
    Unreachable,
    ack_error,
    check_arguments,
    default_url,
    diagnose,
    http_url,
    stderr_notes,
)
from .wire import LeanSession

# How long deliveries must pause, after the last send, before a worker
# decides nothing more is on its way.
QUIET = 0.5
# Handshakes in flight at once, per worker: enough to connect thousands of
# clients in seconds without a thundering herd against NGINX.
CONNECT_CONCURRENCY = 32

note = stderr_notes("chat-bench")
SERVER_RATE = Settings.message_rate  # a replica's default per-connection limit


# -- the plan -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """Who connects where, who sends, and when; shared by every process."""

    urls: tuple[str, ...]
    clients: int
    rooms: int
    senders: int
    rate: float
    duration: float
    warmup: float
    processes: int
    run_id: str
    drain: float = 3.0
    connect_timeout: float = 30.0
    full_clients: bool = False

    def room_index(self, client: int) -> int:
        return client % self.rooms

    def room(self, client: int) -> str:
        return f"bench-{self.run_id}-{self.room_index(client)}"

    def url(self, client: int) -> str:
        # Consecutive clients fill the rooms first, so members of one room
        # are spread over the URLs (plain ``client % len(urls)`` would put a
        # room wholly on one replica whenever rooms == URLs).
        return self.urls[(client // self.rooms) % len(self.urls)]

    def worker(self, client: int) -> int:
        return client % self.processes

    def clients_of(self, worker: int) -> list[int]:
        return list(range(worker, self.clients, self.processes))

    def is_sender(self, client: int) -> bool:
        return client < self.senders

    def is_lean(self, client: int) -> bool:
        """Receives through a lean session rather than python-socketio."""
        return not self.full_clients and not self.is_sender(client)

    def members(self, room_index: int) -> int:
        """Clients in room ``room_index``."""
        return len(range(room_index, self.clients, self.rooms))

    def sender_offset(self, client: int) -> float:
        """Senders are spread evenly over one send interval."""
        return client / self.senders / self.rate

    @property
    def send_end(self) -> float:
        """Seconds from the start instant to the end of sending."""
        return self.warmup + self.duration


# -- statistics ------------------------------------------------------------------

def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not ordered:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


def latency_summary(values: Iterable[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    summary = {f"p{q}": percentile(ordered, q) for q in (50, 90, 99)}
    summary["max"] = ordered[-1] if ordered else None
    return {k: None if v is None else round(v, 3) for k, v in summary.items()}


@dataclasses.dataclass
class Tally:
    """What one worker saw; tallies of several workers merge by addition.

    Everything except ``sent_warmup`` counts measured messages only.
    """

    clients: int = 0
    servers: Counter = dataclasses.field(default_factory=Counter)
    sent: int = 0
    sent_warmup: int = 0
    sent_by_room: Counter = dataclasses.field(default_factory=Counter)
    acks_ok: int = 0
    acks_warmup: int = 0
    ack_errors: Counter = dataclasses.field(default_factory=Counter)
    received: int = 0
    out_of_order: int = 0
    disconnects: int = 0
    latencies_ms: array = dataclasses.field(default_factory=lambda: array("d"))
    ack_ms: array = dataclasses.field(default_factory=lambda: array("d"))
    max_lag_ms: float = 0.0
    cpu_s: float = 0.0

    @property
    def acks_pending(self) -> int:
        return self.sent - self.acks_ok - sum(self.ack_errors.values())

    def count_delivery(self, last_seq: dict[int, int], stamp: Stamp | None,
                       now_ns: int) -> bool:
        """Count one delivery to a receiver whose latest sequence number per
        sender is ``last_seq``; False (nothing counted) unless ``stamp`` is
        a measured message of this run."""
        if stamp is None or stamp.warmup:
            return False
        self.received += 1
        self.latencies_ms.append((now_ns - stamp.sent_ns) / 1e6)
        if stamp.seq <= last_seq.get(stamp.sender, -1):
            self.out_of_order += 1
        else:
            last_seq[stamp.sender] = stamp.seq
        return True


def merge_tallies(tallies: Iterable[Tally]) -> Tally:
    total = Tally()
    for t in tallies:
        total.clients += t.clients
        total.servers.update(t.servers)
        total.sent += t.sent
        total.sent_warmup += t.sent_warmup
        total.sent_by_room.update(t.sent_by_room)
        total.acks_ok += t.acks_ok
        total.acks_warmup += t.acks_warmup
        total.ack_errors.update(t.ack_errors)
        total.received += t.received
        total.out_of_order += t.out_of_order
        total.disconnects += t.disconnects
        total.latencies_ms.extend(t.latencies_ms)
        total.ack_ms.extend(t.ack_ms)
        total.max_lag_ms = max(total.max_lag_ms, t.max_lag_ms)
        total.cpu_s += t.cpu_s
    return total


def expected_deliveries(plan: Plan, sent_by_room: Counter) -> int:
    """Every member of a room, the sender included, receives each message."""
    return sum(count * plan.members(room) for room, count in sent_by_room.items())


def build_report(plan: Plan, tally: Tally, window: float, wall: float,
                 cpu_total: float) -> dict:
    """The run's results as one JSON-ready dict.

    ``window`` is the measured span in seconds (``--duration`` unless the
    run was interrupted), ``wall`` the whole run, ``cpu_total`` the CPU
    seconds of the generator (parent and workers) over ``wall``.
    """
    expected = expected_deliveries(plan, tally.sent_by_room)

    def per_s(count: int) -> float:
        return count / window if window > 0 else 0.0

    members = [plan.members(r) for r in range(plan.rooms)]
    return {
        "run": plan.run_id,
        "urls": list(plan.urls),
        "clients": plan.clients,
        "rooms": plan.rooms,
        "members_per_room": {"min": min(members), "max": max(members)},
        "senders": plan.senders,
        "rate_per_sender": plan.rate,
        "warmup_s": plan.warmup,
        "window_s": round(window, 3),
        "processes": plan.processes,
        "replicas": dict(sorted(tally.servers.items())),
        "sent": tally.sent,
        "sent_per_s": per_s(tally.sent),
        "expected": expected,
        "expected_per_s": per_s(expected),
        "received": tally.received,
        "delivered_per_s": per_s(tally.received),
        "delivery_ratio": tally.received / expected if expected else None,
        "latency_ms": latency_summary(tally.latencies_ms),
        "ack_ms": latency_summary(tally.ack_ms),
        "acks_ok": tally.acks_ok,
        "ack_errors": sum(tally.ack_errors.values()),
        "ack_error_kinds": dict(tally.ack_errors.most_common()),
        "acks_missing": tally.acks_pending,
        "out_of_order": tally.out_of_order,
        "disconnects": tally.disconnects,
        "send_lag_max_ms": tally.max_lag_ms,
        "cpu_measuring_pct": 100 * tally.cpu_s / window if window > 0 else None,
        "cpu_run_pct": 100 * cpu_total / wall if wall > 0 else None,
        "cpu_cores": os.cpu_count(),
    }


def figure(value, spec: str, unit: str = "") -> str:
    """``value`` formatted with ``spec`` and followed by ``unit``, or "-" for None."""
    return "-" if value is None else format(value, spec) + unit


def format_report(r: dict) -> str:
    lo, hi = r["members_per_room"]["min"], r["members_per_room"]["max"]
    members = f"{lo}" if lo == hi else f"{lo}-{hi}"
    lat, ack = r["latency_ms"], r["ack_ms"]
    replicas = ", ".join(f"{name} {n}" for name, n in r["replicas"].items()) or "-"
    errors = "; ".join(f"{n}x {text}" for text, n in r["ack_error_kinds"].items())
    rows = [
        ("run", f"{r['clients']} clients in {r['rooms']} room(s) of {members}, "
                f"{r['senders']} senders x {r['rate_per_sender']:g} msg/s, "
                f"{r['window_s']:g} s measured after {r['warmup_s']:g} s warm-up, "
                f"{r['processes']} process(es)"),
        ("urls", " ".join(r["urls"])),
        ("replicas", replicas),
        ("offered", f"{r['sent_per_s']:.1f} msg/s sent -> {r['expected_per_s']:.1f} "
                    f"deliveries/s expected ({r['sent']} msgs, {r['expected']} deliveries)"),
        ("delivered", f"{r['received']} of {r['expected']} ({figure(r['delivery_ratio'], '.2%')}), "
                      f"{r['delivered_per_s']:.1f} msg/s"),
        ("latency ms", "  ".join(f"{q} {figure(ms, '.1f')}" for q, ms in lat.items())),
        ("ack ms", "  ".join(f"{q} {figure(ms, '.1f')}" for q, ms in ack.items())),
        ("acks", f"{r['acks_ok']} ok, {r['ack_errors']} errors, {r['acks_missing']} missing"
                 + (f" ({errors})" if errors else "")),
        ("anomalies", f"{r['out_of_order']} out-of-order or duplicate deliveries, "
                      f"{r['disconnects']} disconnects"),
        ("generator", f"CPU {figure(r['cpu_measuring_pct'], '.1f', '%')} of one core while "
                      f"measuring, {figure(r['cpu_run_pct'], '.1f', '%')} over the whole run "
                      f"({r['cpu_cores']} cores); "
                      f"max send lag {r['send_lag_max_ms']:.1f} ms"),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# -- one worker process ----------------------------------------------------------

class Member:
    """What every benchmark client counts, however it connects: the replica
    it lands on, its disconnections and the measured messages it receives."""

    def _join_bench(self, plan: Plan, index: int, tally: Tally) -> None:
        self.plan = plan
        self.index = index
        self.tally = tally
        self.last_seq: dict[int, int] = {}
        self.last_rx = 0.0

    def on_welcome(self, previous):
        self.tally.servers[self.server] += 1

    def on_lost(self, reason):
        self.tally.disconnects += 1

    def delivered(self, stamp: Stamp | None, now_ns: int) -> None:
        if self.tally.count_delivery(self.last_seq, stamp, now_ns):
            self.last_rx = time.monotonic()


class Bot(Member, Session):
    """A python-socketio benchmark client: every sender, and every receiver
    with ``--full-clients``."""

    def __init__(self, plan: Plan, index: int, http: aiohttp.ClientSession, tally: Tally):
        super().__init__(plan.url(index), f"bench-{index}", plan.room(index), http)
        self._join_bench(plan, index, tally)

    def on_message(self, event):
        now_ns = time.time_ns()
        self.delivered(decode_stamp(event.get("text"), self.plan.run_id), now_ns)


class LeanReceiver(Member, LeanSession):
    """A receive-only benchmark client that finds each message's stamp in
    the raw frame (see :mod:`chat.tools.wire`)."""

    def __init__(self, plan: Plan, index: int, http: aiohttp.ClientSession, tally: Tally,
                 find_stamp: StampFinder):
        super().__init__(plan.url(index), f"bench-{index}", plan.room(index), http)
        self._join_bench(plan, index, tally)
        self.find_stamp = find_stamp

    def on_message_frame(self, frame, now_ns):
        self.delivered(self.find_stamp(frame), now_ns)


class Worker:
    """Runs in its own process: connects a share of the clients, sends on
    schedule, and sends progress and its final :class:`Tally` to the parent."""

    def __init__(self, plan: Plan, index: int, channel, go, start_at, stop):
        self.plan = plan
        self.index = index
        self.channel = channel
        self.go = go
        self.start_at = start_at
        self.stop = stop
        self.tally = Tally()
        self.bots: list[Bot | LeanReceiver] = []
        self.parent = multiprocessing.parent_process()

    def stopped(self) -> bool:
        """The parent said stop, or died (killed outright): either way, end."""
        return self.stop.is_set() or not self.parent.is_alive()

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0)  # the default 100 would cap the clients
        async with aiohttp.ClientSession(connector=connector) as http:
            find_stamp = StampFinder(self.plan.run_id)
            self.bots = [
                LeanReceiver(self.plan, i, http, self.tally, find_stamp)
                if self.plan.is_lean(i) else Bot(self.plan, i, http, self.tally)
                for i in self.plan.clients_of(self.index)]
            try:
                await self.connect_all(http)
                self.tally.clients = len(self.bots)
                self.channel.put(("ready", self.index, None))
                start = await self.wait_for_go()
                if start is not None:
                    await self.measure(start)
            except ClientError as exc:
                self.channel.put(("error", self.index, str(exc)))
                return
            finally:
                await asyncio.gather(*(bot.close() for bot in self.bots))
        self.send_progress()
        self.channel.put(("result", self.index, self.tally))

    async def connect_all(self, http: aiohttp.ClientSession) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(bot: Bot | LeanReceiver) -> None:
            async with gate:
                await bot.open(explain=False)

        try:
            async with asyncio.timeout(self.plan.connect_timeout):
                results = await asyncio.gather(*(one(b) for b in self.bots),
                                               return_exceptions=True)
        except TimeoutError:
            raise ClientError(f"clients not connected within {self.plan.connect_timeout:g} s "
                              "(--connect-timeout)") from None
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            first = failures[0]
            # Ask the server why once, not once per client.
            reason = await diagnose(http, str(first)) if isinstance(first, Unreachable) \
                else str(first)
            raise ClientError(f"{len(failures)} of {len(self.bots)} clients could not "
                              f"connect, e.g. {reason}")

    async def wait_for_go(self) -> float | None:
        """Wait for the parent's start instant; return it on this process's
        monotonic clock, or None if the run was stopped first."""
        while not self.go.is_set():
            if self.stopped():
                return None
            await asyncio.sleep(0.02)
        return time.monotonic() + (self.start_at.value - time.time())

    async def measure(self, start: float) -> None:
        plan = self.plan
        warm_end, end = start + plan.warmup, start + plan.send_end
        senders = [asyncio.ensure_future(self.send_loop(bot, start, end))
                   for bot in self.bots if plan.is_sender(bot.index)]
        reporter = asyncio.ensure_future(self.report_progress())
        try:
            # The CPU this process spends between the end of the warm-up and
            # the end of sending (or an interruption) is the generator's cost.
            cpu_from = None
            while time.monotonic() < end and not self.stopped():
                if cpu_from is None and time.monotonic() >= warm_end:
                    cpu_from = _cpu_seconds()
                await asyncio.sleep(0.05)
            if cpu_from is not None:
                self.tally.cpu_s = _cpu_seconds() - cpu_from
            if self.stopped():
                for s in senders:
                    s.cancel()
            for outcome in await asyncio.gather(*senders, return_exceptions=True):
                if isinstance(outcome, Exception):
                    raise outcome
            # Deliveries must pause and every acknowledgement be in.
            await until_quiet(lambda: max(end, *(bot.last_rx for bot in self.bots)), QUIET,
                              self.plan.drain, pending=lambda: self.tally.acks_pending,
                              stop=self.stopped)
        finally:
            reporter.cancel()
            for s in senders:
                s.cancel()

    async def send_loop(self, bot: Bot, start: float, end: float) -> None:
        plan, tally = self.plan, self.tally
        warm_end = start + plan.warmup
        room = plan.room_index(bot.index)
        times = send_times(start, plan.rate, plan.sender_offset(bot.index), end)
        async for seq, due, late in on_schedule(times):
            warmup = due < warm_end
            stamp = Stamp(plan.run_id, bot.index, seq, time.time_ns(), warmup)
            sent = await bot.send_message(encode_stamp(stamp),
                                          self._ack_counter(time.perf_counter(), warmup))
            if warmup:
                tally.sent_warmup += sent
                continue
            tally.max_lag_ms = max(tally.max_lag_ms, late * 1000)
            if not sent:
                tally.ack_errors["not connected"] += 1
            tally.sent += 1
            tally.sent_by_room[room] += 1

    def _ack_counter(self, sent: float, warmup: bool):
        def on_ack(ack=None):
            if warmup:
                self.tally.acks_warmup += 1
                return
            error = ack_error(ack)
            if error:
                self.tally.ack_errors[error] += 1
            else:
                self.tally.acks_ok += 1
                self.tally.ack_ms.append((time.perf_counter() - sent) * 1000)
        return on_ack

    async def report_progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.send_progress()

    def send_progress(self) -> None:
        t = self.tally
        # Measured messages, as the summary counts them; the warm-up apart.
        snapshot = {"warm-up": t.sent_warmup, "sent": t.sent, "acked": t.acks_ok,
                    "errors": sum(t.ack_errors.values()), "delivered": t.received,
                    "disconnects": t.disconnects}
        self.channel.put(("progress", self.index, snapshot))


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds (user and system) of this process, or of its ended children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def worker_main(plan: Plan, index: int, channel, go, start_at, stop) -> None:
    """Entry point of a worker process."""
    # Ctrl-C reaches the whole process group; the parent turns it into
    # ``stop`` so that workers still disconnect and report.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # uvloop, as on the replicas: the generator's per-frame wake-ups are most
    # of its cost, and uvloop's loop takes about a third off them.
    loop_factory = uvloop.new_event_loop if uvloop is not None else None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(Worker(plan, index, channel, go, start_at, stop).run())
    except Exception as exc:  # report, do not leave the parent waiting
        channel.put(("error", index, f"worker {index} failed: {type(exc).__name__}: {exc}"))
    if not multiprocessing.parent_process().is_alive():
        # Nobody reads the queue any more: exit without flushing it.
        channel.cancel_join_thread()


# -- the parent ------------------------------------------------------------------

class Conductor:
    """Starts the workers, gives the start signal, shows progress, merges results."""

    def __init__(self, plan: Plan, progress: bool = True):
        self.plan = plan
        self.show_progress = progress
        ctx = multiprocessing.get_context("spawn")
        self.channel = ctx.Queue()
        self.go = ctx.Event()
        self.stop = ctx.Event()
        self.start_at = ctx.Value("d", 0.0)
        self.workers = [
            ctx.Process(target=worker_main, name=f"chat-bench-{k}", daemon=True,
                        args=(plan, k, self.channel, self.go, self.start_at, self.stop))
            for k in range(plan.processes)]
        self.ready: set[int] = set()
        self.results: dict[int, Tally] = {}
        self.progress: dict[int, dict] = {}
        self.errors: list[str] = []
        self.interrupted_at: float | None = None
        self.started = 0.0

    def run(self) -> dict:
        cpu_before = _cpu_seconds(resource.RUSAGE_CHILDREN) + _cpu_seconds()
        began = time.monotonic()
        for w in self.workers:
            w.start()
        try:
            self._collect()
        finally:
            self.stop.set()
            self._join()
        wall = time.monotonic() - began
        cpu_total = _cpu_seconds(resource.RUSAGE_CHILDREN) + _cpu_seconds() - cpu_before
        if self.errors:
            raise ClientError(self.errors[0])
        if not self.go.is_set():
            raise ClientError("interrupted before the run started")
        window = self.plan.duration
        if self.interrupted_at is not None:
            measured_from = self.started + self.plan.warmup
            window = min(window, max(0.0, self.interrupted_at - measured_from))
        tally = merge_tallies(self.results.values())
        return build_report(self.plan, tally, window, wall, cpu_total)

    def _collect(self) -> None:
        last_print = time.monotonic()
        while len(self.results) < len(self.workers) and not self.errors:
            try:
                kind, index, body = self.channel.get(timeout=0.2)
                self._handle(kind, index, body)
            except queue.Empty:
                self._check_workers()
            except KeyboardInterrupt:
                if self.interrupted_at is not None:
                    raise
                self.interrupted_at = time.time()
                self.stop.set()
                print("\nchat-bench: interrupted; stopping and reporting what was measured",
                      file=sys.stderr)
            everyone_ready = len(self.ready) == len(self.workers)
            if everyone_ready and not self.go.is_set() and self.interrupted_at is None:
                self.started = time.time() + 0.2
                self.start_at.value = self.started
                self.go.set()
            if self.go.is_set() and time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                self._print_progress()
        if self.show_progress and self.go.is_set():
            self._print_progress(final=True)

    def _handle(self, kind: str, index: int, body) -> None:
        if kind == "ready":
            self.ready.add(index)
        elif kind == "progress":
            self.progress[index] = body
        elif kind == "result":
            self.results[index] = body
        elif kind == "error":
            self.errors.append(body)

    def _check_workers(self) -> None:
        for k, w in enumerate(self.workers):
            if w.exitcode is not None and k not in self.results:
                # A last message may still be in the pipe: take it first.
                with contextlib.suppress(queue.Empty):
                    while True:
                        self._handle(*self.channel.get(timeout=0.2))
                if k not in self.results and not self.errors:
                    self.errors.append(f"worker {k} exited with status {w.exitcode}")

    def _print_progress(self, final: bool = False) -> None:
        if not self.show_progress:
            return
        total = Counter()
        for snapshot in self.progress.values():
            total.update(snapshot)
        elapsed = max(0.0, time.time() - self.started)
        # The workers' counts arrive once a second: "measuring" only once
        # they show measured messages, so the line never reads "delivered 0".
        measuring = elapsed >= self.plan.warmup and total["sent"] > 0
        phase = "measuring" if measuring else "warm-up"
        if elapsed >= self.plan.send_end:
            phase = "draining"
        if final:
            phase = "done"
        line = f"chat-bench {elapsed:5.1f}s {phase:<9} " + " ".join(
            f"{key} {total[key]}" for key in ("warm-up", "sent", "acked", "errors", "delivered",
                                              "disconnects"))
        tty = sys.stderr.isatty()
        end = "\n" if final or not tty else ""
        print(("\r" if tty else "") + line, end=end, file=sys.stderr, flush=True)

    def _join(self) -> None:
        for w in self.workers:
            w.join(timeout=self.plan.drain + 10)
        for w in self.workers:
            if w.is_alive():
                w.terminate()
                w.join(timeout=5)
        # Release the queue's feeder thread so the interpreter can exit.
        self.channel.close()
        self.channel.join_thread()


# -- command line ------------------------------------------------------------------

class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show (not None or off)."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-bench", description=__doc__.splitlines()[0],
        formatter_class=DefaultsFormatter)
    parser.add_argument("--url", action="append", type=http_url,
                        help=URL_HELP + "; repeat to spread clients over several")
    parser.add_argument("--clients", type=int, default=100, help="connections to open")
    parser.add_argument("--rooms", type=int, default=1, help="rooms, clients spread evenly")
    parser.add_argument("--senders", type=int, default=10,
                        help="how many of the clients send")
    parser.add_argument("--rate", type=float, default=1.0,
                        help=f"messages per second per sender (the server allows "
                             f"{SERVER_RATE:g} by default: MESSAGE_RATE)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of sending before measuring")
    parser.add_argument("--drain", type=float, default=3.0,
                        help="at most this many seconds to wait for stragglers at the end")
    parser.add_argument("--connect-timeout", type=float, default=30.0,
                        help="seconds allowed to connect all clients")
    parser.add_argument("--processes", type=int, default=1,
                        help="worker processes sharing the clients")
    parser.add_argument("--full-clients", action="store_true",
                        help="make the receivers python-socketio clients too, rather than "
                             "lean ones that spend less of the generator's CPU")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the table")
    return parser


def plan_from(args, parser: argparse.ArgumentParser) -> Plan:
    check_arguments(parser, [
        (args.clients < 1, "--clients must be at least 1"),
        (not 1 <= args.rooms <= args.clients, "--rooms must be between 1 and --clients"),
        (not 1 <= args.senders <= args.clients, "--senders must be between 1 and --clients"),
        (not 1 <= args.processes <= args.clients,
         "--processes must be between 1 and --clients"),
        (args.rate <= 0, "--rate must be positive"),
        (args.duration <= 0, "--duration must be positive"),
        (args.warmup < 0 or args.drain < 0, "--warmup and --drain cannot be negative"),
        (args.connect_timeout <= 0, "--connect-timeout must be positive"),
    ])
    if args.rate > SERVER_RATE:
        note(f"--rate {args.rate:g} is above the {SERVER_RATE:g} messages/s a server allows "
             "each connection by default (MESSAGE_RATE): expect refused messages")
    try:
        urls = tuple(args.url or [default_url()])
    except argparse.ArgumentTypeError as exc:
        parser.error(f"CHAT_URL: {exc}")
    return Plan(urls=urls, clients=args.clients,
                rooms=args.rooms, senders=args.senders, rate=args.rate,
                duration=args.duration, warmup=args.warmup, processes=args.processes,
                run_id=secrets.token_hex(3), drain=args.drain,
                connect_timeout=args.connect_timeout, full_clients=args.full_clients)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plan = plan_from(args, parser)
    try:
        report = Conductor(plan).run()
    except ClientError as exc:
        note(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
