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

This file holds the parent (:class:`Conductor`) and the command line; the
plan, the tally and the report are in :mod:`chat.tools.benchrun` (pure, tested
without a server), the worker processes in :mod:`chat.tools.benchworker`,
stamps and the schedule in :mod:`chat.tools.load`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import queue
import resource
import secrets
import sys
import time
from collections import Counter

try:
    import uvloop
except ImportError:  # not on Windows
    uvloop = None

from ..settings import Settings
from .benchrun import Plan, Tally, build_report, format_report, merge_tallies
from .benchworker import cpu_seconds, worker_main
from .session import (
    URL_HELP,
    ClientError,
    check_arguments,
    default_url,
    http_url,
    stderr_notes,
)

note = stderr_notes("chat-bench")
SERVER_RATE = Settings.message_rate  # a replica's default per-connection limit


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
        cpu_before = cpu_seconds(resource.RUSAGE_CHILDREN) + cpu_seconds()
        began = time.monotonic()
        for w in self.workers:
            w.start()
        try:
            self._collect()
        finally:
            self.stop.set()
            self._join()
        wall = time.monotonic() - began
        cpu_total = cpu_seconds(resource.RUSAGE_CHILDREN) + cpu_seconds() - cpu_before
        if self.errors:
            raise ClientError(self.errors[0])
        if not self.go.is_set():
            raise ClientError("interrupted before the run started")
        window = self.plan.duration
        measured_from = self.started + self.plan.warmup
        if self.interrupted_at is not None:
            window = min(window, max(0.0, self.interrupted_at - measured_from))
        tally = merge_tallies(self.results.values())
        report = build_report(self.plan, tally, window, wall, cpu_total)
        # When the measured window was, on the wall clock: what a caller that
        # samples the servers (the sweep's CPU per delivery) needs.
        report["measured_at"] = [round(measured_from, 3), round(measured_from + window, 3)]
        return report

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
    parser.add_argument("--spread", type=int, default=0,
                        help="put each room's members on this many neighbouring --url "
                             "values (room r on URLs r, r+1, ...); 0: on all of them")
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
    try:
        urls = tuple(args.url or [default_url()])
    except argparse.ArgumentTypeError as exc:
        parser.error(f"CHAT_URL: {exc}")
    check_arguments(parser, [
        (args.clients < 1, "--clients must be at least 1"),
        (not 1 <= args.rooms <= args.clients, "--rooms must be between 1 and --clients"),
        (not 1 <= args.senders <= args.clients, "--senders must be between 1 and --clients"),
        (not 0 <= args.spread <= len(urls), "--spread must be between 0 and the number of "
                                            "--url values"),
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
    return Plan(urls=urls, clients=args.clients,
                rooms=args.rooms, senders=args.senders, rate=args.rate,
                duration=args.duration, warmup=args.warmup, processes=args.processes,
                run_id=secrets.token_hex(3), drain=args.drain,
                connect_timeout=args.connect_timeout, full_clients=args.full_clients,
                spread=args.spread)


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
