"""What a chat-chaos run records, and the report made of it (pure: tested
without a cluster in ``tests/test_chaos.py``).

What the columns mean (all per phase of sending):

* ``sent``: messages handed to the client library; ``not sent``: attempts
  while the sender was disconnected (it knew at once, nothing left it).
* ``ok`` / ``error`` / ``no ack``: how the server answered each sent message.
* ``expected``: sent x all clients.  Every client stays in the room for the
  whole run and the sender receives its own messages too, so this is what a
  user would call "everybody saw everything".  Counting only the clients
  connected at send time would hide exactly the losses a reconnection
  causes, so they are counted, and then told apart:
* ``lost`` = expected - delivered, where ``delivered`` counts each
  (receiver, message) pair once; ``lost offline`` is the part whose receiver
  was between a disconnection and its next ``welcome`` when the message was
  sent (no history yet: such a client can never get it), the rest was lost
  while the receiver was connected; ``silent`` is the part of that rest
  whose sender was told ``ok``: nobody was warned of those.  ``silent msgs``
  counts the same per message: messages acknowledged ``ok`` that some
  connected receiver never got (one message lost by ten receivers is one).
* ``dup``: deliveries of a message a receiver had already received, after
  the client dropped repeats by number (what a user would see twice);
  ``wire dup``: ``message`` events of one connection that repeated a
  message, counted as they came off the wire, before the client's repair.
* ``reconn``: reconnections (a ``welcome`` after the first) that happened
  during the phase; ``offline max``: the longest gap between a client's
  disconnection and its next ``welcome`` that began in the phase.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence

from .benchrun import figure, latency_summary

PHASES = ("steady", "redis-down", "redis-back", "replica-killed", "recovered")


# -- what the clients record -----------------------------------------------------

NOT_SENT = "not sent"  # an outcome: the sender was disconnected at its turn


@dataclasses.dataclass
class Sent:
    """One message a sender tried to send."""

    sender: int
    seq: int
    phase: str
    sent_at: float  # epoch seconds
    outcome: str | None = None  # None: no ack (yet); "ok"; NOT_SENT; or the error text


@dataclasses.dataclass
class Receiver:
    """What one client saw: its connections and the messages it received."""

    index: int
    # (welcome time, replica), in order; the first one is the initial connection.
    welcomes: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    disconnects: list[float] = dataclasses.field(default_factory=list)
    # (sender, seq) -> time of the first delivery; then how many came again.
    first_seen: dict[tuple[int, int], float] = dataclasses.field(default_factory=dict)
    repeats: Counter = dataclasses.field(default_factory=Counter)
    # (sender, seq) -> ``message`` events that repeated it within one connection.
    wire_repeats: Counter = dataclasses.field(default_factory=Counter)

    def online(self) -> list[tuple[float, float]]:
        """The spans during which this client was connected (welcome to disconnect)."""
        spans, events = [], sorted(
            [(t, 1) for t, _ in self.welcomes] + [(t, 0) for t in self.disconnects])
        since = None
        for t, up in events:
            if up and since is None:
                since = t
            elif not up and since is not None:
                spans.append((since, t))
                since = None
        if since is not None:
            spans.append((since, math.inf))
        return spans

    def offline_gaps(self) -> list[tuple[float, float]]:
        """(disconnection, next welcome or inf) for every disconnection."""
        gaps = []
        for lost in self.disconnects:
            back = next((t for t, _ in self.welcomes if t > lost), math.inf)
            gaps.append((lost, back))
        return gaps


@dataclasses.dataclass(frozen=True)
class PhaseSpan:
    name: str
    start: float  # epoch seconds: when the phase's damage began
    end: float  # when the next phase began, or sending stopped
    event: str


# -- the report (pure) -----------------------------------------------------------

def phase_at(spans: Sequence[PhaseSpan], t: float) -> str:
    """The phase under way at ``t``; after the last one, the last one (the drain)."""
    current = spans[0].name
    for span in spans:
        if t >= span.start:
            current = span.name
    return current


def connected_at(spans: Sequence[tuple[float, float]], t: float) -> bool:
    return any(start <= t < end for start, end in spans)


def summarize(spans: Sequence[PhaseSpan], sends: Iterable[Sent],
              receivers: Sequence[Receiver]) -> dict:
    """Per-phase counts and their totals (see the module docstring)."""
    names = [span.name for span in spans]
    rows = {name: Counter() for name in names}
    errors = {name: Counter() for name in names}
    latencies: dict[str, list[float]] = {name: [] for name in names}
    offline_max = dict.fromkeys(names, 0.0)
    online = [r.online() for r in receivers]
    clients = len(receivers)

    for msg in sends:
        row = rows[msg.phase]
        if msg.outcome == NOT_SENT:
            row["not_sent"] += 1
            continue
        row["sent"] += 1
        if msg.outcome is None:
            row["no_ack"] += 1
        elif msg.outcome == "ok":
            row["acked_ok"] += 1
        else:
            row["acked_error"] += 1
            errors[msg.phase][msg.outcome] += 1
        row["expected"] += clients
        key = (msg.sender, msg.seq)
        silent = False
        for receiver, spans_on in zip(receivers, online, strict=True):
            arrived = receiver.first_seen.get(key)
            if arrived is not None:
                row["delivered"] += 1
                latencies[msg.phase].append((arrived - msg.sent_at) * 1000)
            elif connected_at(spans_on, msg.sent_at):
                row["lost_online"] += 1
                if msg.outcome == "ok":
                    row["lost_silently"] += 1
                    silent = True
            else:
                row["lost_offline"] += 1
            row["duplicated"] += receiver.repeats.get(key, 0)
            row["duplicated_on_wire"] += receiver.wire_repeats.get(key, 0)
        row["silent_messages"] += silent

    for receiver in receivers:
        for t, _ in receiver.welcomes[1:]:
            rows[phase_at(spans, t)]["reconnections"] += 1
        for lost, back in receiver.offline_gaps():
            phase = phase_at(spans, lost)
            rows[phase]["disconnections"] += 1
            offline_max[phase] = max(offline_max[phase], back - lost)

    fields = ("sent", "not_sent", "acked_ok", "acked_error", "no_ack", "expected",
              "delivered", "lost", "lost_online", "lost_offline", "lost_silently",
              "silent_messages", "duplicated", "duplicated_on_wire", "disconnections",
              "reconnections")
    phases = []
    for span in spans:
        row = rows[span.name]
        row["lost"] = row["lost_online"] + row["lost_offline"]
        phases.append({
            "name": span.name,
            "event": span.event,
            "started_s": round(span.start - spans[0].start, 3),
            "duration_s": round(span.end - span.start, 3),
            **{field: row[field] for field in fields},
            "delivery_ratio": row["delivered"] / row["expected"] if row["expected"] else None,
            "ack_errors": dict(errors[span.name].most_common()),
            "latency_ms": latency_summary(latencies[span.name]),
            "offline_max_s": None if not offline_max[span.name] else (
                round(offline_max[span.name], 3)
                if math.isfinite(offline_max[span.name]) else "never back"),
        })
    totals = {field: sum(p[field] for p in phases) for field in fields}
    totals["delivery_ratio"] = (totals["delivered"] / totals["expected"]
                                if totals["expected"] else None)
    return {"phases": phases, "totals": totals}


def format_report(report: dict) -> str:
    header = (f"{report['clients']} clients in one room through {report['url']}, "
              f"{report['senders']} senders x {report['rate']:g} msg/s, "
              f"phases of {report['phase_s']:g} s")
    if report["mode"]:
        header = f"mode {report['mode']}, {report['replicas']} replicas; " + header
    held = report["clients_per_replica"]
    columns = ("phase", "secs", "sent", "ok", "error", "no ack", "not sent", "expected",
               "delivered", "lost", "offline", "silent", "silent msgs", "dup", "wire dup",
               "reconn", "p50 ms", "max ms")
    table = [columns]
    for p in [*report["phases"], {"name": "total", **report["totals"]}]:
        lat = p.get("latency_ms") or {}
        table.append((
            p["name"], f"{p['duration_s']:.1f}" if "duration_s" in p else "",
            p["sent"], p["acked_ok"], p["acked_error"], p["no_ack"], p["not_sent"],
            p["expected"], f"{p['delivered']} {figure(p['delivery_ratio'], '.1%')}",
            p["lost"], p["lost_offline"], p["lost_silently"], p["silent_messages"],
            p["duplicated"], p["duplicated_on_wire"], p["reconnections"],
            figure(lat.get("p50"), ".0f"), figure(lat.get("max"), ".0f")))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(columns))]
    lines = [header, f"clients per replica: at start {spread(held['start'])}; "
                     f"at end {spread(held['end'])}", ""]
    for row in table:
        cells = [str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells))
    lines.append("")
    for p in report["phases"]:
        detail = p["event"]
        if p["offline_max_s"] is not None:
            detail += f"; longest reconnection {p['offline_max_s']} s"
        for text, n in p["ack_errors"].items():
            detail += f"; {n}x error {text!r}"
        lines.append(f"{p['name']:<15} {detail}")
    lines.append("")
    lines.append("expected = sent x all clients; lost = expected - delivered (each receiver "
                 "counted once per message); of the lost: 'offline' while the receiver was "
                 "reconnecting, 'silent' while it was connected and the sender's ack said ok "
                 "('silent msgs': the messages concerned); dup = repeated deliveries after the "
                 "client dropped repeats, 'wire dup' before")
    return "\n".join(lines)


def spread(held: dict[str, int]) -> str:
    """Clients per replica, as one line: "replica-1 14, replica-2 8"."""
    return ", ".join(f"{k} {v}" for k, v in held.items()) or "-"
