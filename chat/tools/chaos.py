"""chat-chaos: break the cluster under a steady chat load, and count what got through.

How a run goes:

1. **Cluster.**  Bring up Redis, ``--replicas`` replicas (``--mode``) and
   NGINX with :class:`chat.tools.cluster.LocalCluster` in a state folder of its own
   (temporary unless ``--state-dir`` is given); it waits until every replica
   answers ``/readyz``.  Whatever happens next, the cluster is torn down at
   the end (``finally``; Ctrl-C and SIGTERM included).  With ``--url`` it
   uses a cluster that is already running instead, cannot break anything,
   and runs the ``steady`` phase only.
2. **Clients.**  ``--clients`` Socket.IO clients connect through NGINX
   (WebSocket only, each with its own ``?sticky=`` key, reconnecting after
   0.5 s doubling to 2 s), all to one room.  Each records every ``welcome``
   (the replica it landed on), every disconnection and every message.
3. **Load.**  The first ``--senders`` clients send ``--rate`` messages per
   second each, open loop: on a fixed schedule, never waiting for an earlier
   acknowledgement.  Each text is a stamp (:mod:`chat.tools.load`): run id, sender,
   sequence number, send time.  A sender records each message's
   acknowledgement: ok, an error (its text), or none at all.  A sender that
   is reconnecting at its turn cannot send; that attempt is counted as
   ``not sent``.
4. **Phases.**  Each phase first does its damage, then lasts ``--phase``
   seconds; a message belongs to the phase during which it was *sent*,
   including while the damage was being done:

   ``steady``          nothing broken: the baseline
   ``redis-down``      Redis is stopped (SIGTERM)
   ``redis-back``      Redis is started again on the same port
   ``replica-killed``  the replica holding the most clients gets SIGKILL
   ``recovered``       that replica is restarted (``restart_replica``: taken
                       out of NGINX, started, healthy, put back); the
                       phase's seconds start once it is back

5. **Drain and report.**  After the last phase, sending stops; the run
   waits until deliveries and acknowledgements have been quiet for a second
   (at most ``--drain`` seconds), disconnects, and prints a table per phase
   (or one JSON object with ``--json``).

The records and the report (what each column means) are in
:mod:`chat.tools.chaosreport`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from .chaosreport import (
    NOT_SENT,
    PHASES,
    PhaseSpan,
    Receiver,
    Sent,
    format_report,
    spread,
    summarize,
)
from .cluster import ClusterError, LocalCluster, free_port
from .load import Stamp, decode_stamp, encode_stamp, on_schedule, send_times, until_quiet
from .session import ClientError, Session, ack_error, check_arguments, http_url, stderr_notes

# Deliveries and acks must pause this long, after sending stops, before the
# run decides nothing more is on its way.
QUIET = 1.0
CONNECT_TIMEOUT = 20.0

note = stderr_notes("chat-chaos")


# -- the clients -----------------------------------------------------------------

class Member(Session):
    """One client of the room: a reconnecting session that records what it sees."""

    def __init__(self, run: Chaos, index: int, http: aiohttp.ClientSession):
        super().__init__(run.url, f"chaos-{index}", run.room, http, reconnect=True)
        self.run = run
        self.index = index
        self.log = Receiver(index)
        self.wire: set[tuple[int, int]] = set()  # stamps of this connection's events

    def _on_welcome(self, welcome):
        self.wire = set()
        super()._on_welcome(welcome)

    def _on_message(self, event):
        """Count a repeated ``message`` event of this connection before the
        Cursor drops it: a replica that writes a message twice is caught
        here even though the user would never see it."""
        stamp = decode_stamp(event.get("text") if isinstance(event, dict) else None,
                             self.run.run_id)
        if stamp is not None:
            key = (stamp.sender, stamp.seq)
            if key in self.wire:
                self.log.wire_repeats[key] += 1
            self.wire.add(key)
        super()._on_message(event)

    def on_welcome(self, previous):
        self.log.welcomes.append((time.time(), self.server))
        if previous is not None:
            self.run.activity()

    def on_lost(self, reason):
        self.log.disconnects.append(time.time())

    def on_message(self, event):
        stamp = decode_stamp(event.get("text") if isinstance(event, dict) else None,
                             self.run.run_id)
        if stamp is None:
            return
        key = (stamp.sender, stamp.seq)
        if key in self.log.first_seen:
            self.log.repeats[key] += 1
        else:
            self.log.first_seen[key] = time.time()
        self.run.activity()


# -- the run ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Options:
    replicas: int
    mode: str
    clients: int
    senders: int
    rate: float
    phase: float
    drain: float
    url: str | None  # an external cluster: steady phase only


class Chaos:
    """Connects the clients, sends, breaks the cluster phase by phase, reports."""

    def __init__(self, options: Options, cluster: LocalCluster | None, url: str):
        self.options = options
        self.cluster = cluster
        self.url = url
        self.run_id = secrets.token_hex(3)
        self.room = f"chaos-{self.run_id}"
        self.phase = PHASES[0]
        self.sends: list[Sent] = []
        self.members: list[Member] = []
        self.spans: list[PhaseSpan] = []
        self.last_activity = time.monotonic()
        self.victim: str | None = None
        self.victim_held = 0

    def activity(self) -> None:
        self.last_activity = time.monotonic()

    async def run(self) -> dict:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            self.members = [Member(self, i, http) for i in range(self.options.clients)]
            senders: list[asyncio.Task] = []
            try:
                await asyncio.gather(*(m.open(CONNECT_TIMEOUT) for m in self.members))
                at_start = self.clients_per_replica()
                note(f"{len(self.members)} clients connected ({spread(at_start)})")
                start = time.monotonic() + 0.1
                senders = [asyncio.create_task(self.send_loop(m, start))
                           for m in self.members[:self.options.senders]]
                await self.conduct()
                for task in senders:  # sending stops
                    task.cancel()
                for outcome in await asyncio.gather(*senders, return_exceptions=True):
                    if isinstance(outcome, Exception):
                        raise outcome
                self.activity()
                await until_quiet(lambda: self.last_activity, QUIET, self.options.drain)
            finally:
                for task in senders:
                    task.cancel()
                await asyncio.gather(*senders, return_exceptions=True)
                at_end = self.clients_per_replica()
                await asyncio.gather(*(m.close() for m in self.members))
        return self.report(at_start, at_end)

    def clients_per_replica(self) -> dict[str, int]:
        held = Counter(m.server for m in self.members if m.sio.connected and m.server)
        return dict(sorted(held.items()))

    async def conduct(self) -> None:
        phases = PHASES if self.cluster is not None else PHASES[:1]
        for name in phases:
            start = time.time()
            self.phase = name  # messages sent from now on belong to this phase
            event = await self.damage(name)
            note(f"{time.time() - self.spans[0].start if self.spans else 0.0:5.1f} s "
                 f"{name}: {event}")
            if self.spans:
                self.spans[-1] = dataclasses.replace(self.spans[-1], end=start)
            self.spans.append(PhaseSpan(name, start, math.inf, event))
            await asyncio.sleep(self.options.phase)
        self.spans[-1] = dataclasses.replace(self.spans[-1], end=time.time())

    async def damage(self, phase: str) -> str:
        """Do what ``phase`` is about; return what was done, in words.

        The cluster's calls block (they wait for processes), so they run in
        a thread while the clients go on sending and receiving.
        """
        cluster = self.cluster
        if phase == "steady":
            return "nothing broken" if cluster else f"external cluster {self.url}"
        if phase == "redis-down":
            await asyncio.to_thread(cluster.stop_redis)
            return "Redis stopped (SIGTERM)"
        if phase == "redis-back":
            await asyncio.to_thread(cluster.start_redis)
            return "Redis started again on the same port"
        if phase == "replica-killed":
            held = self.clients_per_replica()
            alive = [r.server_id for r in cluster.replicas]
            self.victim = max(alive, key=lambda s: (held.get(s, 0), s))
            self.victim_held = held.get(self.victim, 0)
            await asyncio.to_thread(cluster.kill_replica, self.victim)
            return f"{self.victim} killed with SIGKILL (it held {self.victim_held} clients)"
        if phase == "recovered":
            began = time.monotonic()
            await asyncio.to_thread(cluster.restart_replica, self.victim)
            return (f"{self.victim} restarted and back behind NGINX after "
                    f"{time.monotonic() - began:.1f} s (clients stay where they reconnected)")
        raise ValueError(phase)

    async def send_loop(self, member: Member, start: float) -> None:
        options = self.options
        offset = member.index / options.senders / options.rate
        async for seq, _, _ in on_schedule(send_times(start, options.rate, offset, math.inf)):
            now_ns = time.time_ns()
            msg = Sent(member.index, seq, self.phase, now_ns / 1e9)
            self.sends.append(msg)
            text = encode_stamp(Stamp(self.run_id, member.index, seq, now_ns))
            if not await member.send_message(text, self._on_ack(msg)):
                msg.outcome = NOT_SENT

    def _on_ack(self, msg: Sent):
        def on_ack(ack=None):
            error = ack_error(ack)
            msg.outcome = "ok" if error is None else error
            self.activity()
        return on_ack

    def report(self, at_start: dict, at_end: dict) -> dict:
        o = self.options
        summary = summarize(self.spans, self.sends, [m.log for m in self.members])
        return {
            "run": self.run_id,
            "url": self.url,
            "mode": o.mode if self.cluster else None,
            "replicas": len(self.cluster.replicas) if self.cluster else None,
            "clients": o.clients,
            "senders": o.senders,
            "rate": o.rate,
            "phase_s": o.phase,
            "killed": self.victim,
            "killed_held": self.victim_held,
            "clients_per_replica": {"start": at_start, "end": at_end},
            "expected_is": "sent x all clients (the sender included)",
            **summary,
        }




# -- command line ------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chat.tools.chaos", description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3, help="replicas to start")
    parser.add_argument("--mode", choices=("socketio", "pubsub"), default="pubsub",
                        help="backplane mode of the replicas")
    parser.add_argument("--clients", type=int, default=30, help="clients in the room")
    parser.add_argument("--senders", type=int, default=5, help="how many of them send")
    parser.add_argument("--rate", type=float, default=5.0,
                        help="messages per second per sender (the server allows 10)")
    parser.add_argument("--phase", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--drain", type=float, default=5.0,
                        help="at most this many seconds to wait for stragglers at the end")
    parser.add_argument("--url", type=http_url, default=None,
                        help="use this running cluster instead of starting one "
                             "(nothing is broken then: steady phase only)")
    parser.add_argument("--state-dir", default=None,
                        help="keep the cluster's PIDs and logs here (default: a temporary "
                             "folder, removed at the end)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the table")
    return parser


def options_from(args, parser: argparse.ArgumentParser) -> Options:
    check_arguments(parser, [
        (args.replicas < 2, "--replicas must be at least 2 (one is killed)"),
        (args.clients < 1, "--clients must be at least 1"),
        (not 1 <= args.senders <= args.clients, "--senders must be between 1 and --clients"),
        (args.rate <= 0, "--rate must be positive"),
        (args.phase <= 0, "--phase must be positive"),
        (args.drain < 0, "--drain cannot be negative"),
    ])
    return Options(replicas=args.replicas, mode=args.mode, clients=args.clients,
                   senders=args.senders, rate=args.rate, phase=args.phase,
                   drain=args.drain, url=args.url)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    options = options_from(args, parser)
    # SIGTERM (a CI timeout, `kill`) tears down like Ctrl-C does.
    signal.signal(signal.SIGTERM, _terminate)
    cluster = None  # set once it is ours to stop
    state_dir = Path(args.state_dir) if args.state_dir else None
    temporary = state_dir is None and options.url is None
    try:
        if options.url is None:
            state_dir = state_dir or Path(tempfile.mkdtemp(prefix="chat-chaos-"))
            starting = LocalCluster(state_dir)
            note(f"starting {options.replicas} replicas ({options.mode}) in {state_dir}")
            # up() stops what it started if it fails, and refuses (starting
            # nothing) if a cluster already runs from that folder: not ours.
            starting.up(replicas=options.replicas, mode=options.mode, port=free_port())
            cluster = starting
        report = asyncio.run(Chaos(options, cluster, options.url or cluster.url).run())
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    except (ClientError, ClusterError) as exc:
        note(str(exc))
        return 1
    finally:
        if cluster is not None:
            # A second Ctrl-C must not leave processes behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            note("stopping the cluster")
            cluster.down()
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if temporary and state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
