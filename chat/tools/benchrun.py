"""One chat-bench run as data: what it asks for (:class:`Plan`), what the
workers count (:class:`Tally`, merged by addition), and the report made of
them (percentiles, the table, the JSON object).

Plain functions and dataclasses, tested without a server
(``tests/test_bench_unit.py``); ``bench.py`` runs the plan, ``benchworker.py``
counts.
"""

from __future__ import annotations

import dataclasses
import os
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence

try:
    import uvloop
except ImportError:  # not on Windows
    uvloop = None

from .load import (
    Stamp,
)

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
    spread: int = 0  # URLs each room's members are put on (0: all)

    def room_index(self, client: int) -> int:
        return client % self.rooms

    def room(self, client: int) -> str:
        return f"bench-{self.run_id}-{self.room_index(client)}"

    def url(self, client: int) -> str:
        # Consecutive clients fill the rooms first, so members of one room
        # are spread over the URLs (plain ``client % len(urls)`` would put a
        # room wholly on one replica whenever rooms == URLs).  With
        # ``spread`` k, room r's members take URLs r, r+1 ... r+k-1 in turn:
        # many small rooms, each on a few neighbouring replicas.
        member = client // self.rooms
        if self.spread:
            return self.urls[(self.room_index(client) + member % self.spread) % len(self.urls)]
        return self.urls[member % len(self.urls)]

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
        "spread": plan.spread,
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
