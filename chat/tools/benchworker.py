"""A chat-bench worker process: its share of the clients, its senders on
schedule, and its :class:`~chat.tools.benchrun.Tally`, sent to the parent
(``bench.py``) as progress every second and whole at the end.

Senders are python-socketio clients (:class:`Bot`); receivers are lean
ones that find each message's stamp in the raw frame (:class:`LeanReceiver`,
:mod:`chat.tools.wire`) unless ``--full-clients`` asks for Bots.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import signal
import time

import aiohttp

try:
    import uvloop
except ImportError:  # not on Windows
    uvloop = None

from .benchrun import Plan, Tally
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
    ClientError,
    Session,
    Unreachable,
    ack_error,
    diagnose,
)
from .wire import LeanSession

# How long deliveries must pause, after the last send, before a worker
# decides nothing more is on its way.
QUIET = 0.5
# Handshakes in flight at once, per worker: enough to connect thousands of
# clients in seconds without a thundering herd against NGINX.
CONNECT_CONCURRENCY = 32


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
                    cpu_from = cpu_seconds()
                await asyncio.sleep(0.05)
            if cpu_from is not None:
                self.tally.cpu_s = cpu_seconds() - cpu_from
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


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
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
