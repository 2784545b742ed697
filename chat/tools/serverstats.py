"""What the servers spent during a benchmark: CPU, and backplane traffic.

chat-bench measures from the clients' side; the cost per delivery is on the
servers' side.  A :class:`Sampler` thread reads a growing total every few
tenths of a second while chat-bench runs; given the measured window's
wall-clock bounds (chat-bench's ``measured_at``), :meth:`Sampler.between`
interpolates what the window alone added, so connecting, the warm-up and
the drain are not counted.  Two totals are sampled:

* the CPU seconds (user + system, from ``/proc``) of every process of the
  topology: each replica with its children (gunicorn's worker), Redis,
  Node's servers (:func:`cpu_sampler`).  Divided by the deliveries measured:
  CPU per delivery, the figure to hold beside Node's;
* each replica's ``chat_backplane_received_total`` (:func:`received`): how
  many backplane messages the replicas took in, whatever room they were
  for.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from pathlib import Path

PERIOD = 0.2  # seconds between two CPU samples
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[int, float] | None:
    """``(parent pid, CPU seconds)`` of a process, or None if it is gone."""
    try:
        _, tail = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)
    except (OSError, ValueError):
        return None
    fields = tail.split()
    # After the command: state, ppid, ... utime is field 14, stime 15 (1-based).
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds of the processes ``roots`` and all their descendants."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(entry.name)) is not None:
            stats[int(entry.name)] = stat
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(children.get(pid, ()))
    return total


class Sampler(threading.Thread):
    """Samples ``read()`` (a growing total: CPU seconds, messages received)
    every ``period`` seconds until :meth:`stop`; :meth:`between` is how much
    it grew between two wall-clock instants."""

    def __init__(self, read, period: float = PERIOD):
        super().__init__(name="sampler", daemon=True)
        self.read = read
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            value = self.read()
            if value is not None:
                self.samples.append((time.time(), value))
            self._stopping.wait(self.period)

    def stop(self) -> None:
        self._stopping.set()
        self.join()

    def at(self, when: float) -> float | None:
        """CPU seconds at wall time ``when``, interpolated between samples."""
        before = [s for s in self.samples if s[0] <= when]
        after = [s for s in self.samples if s[0] >= when]
        if not before or not after:
            return None
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)

    def between(self, start: float, end: float) -> float | None:
        first, last = self.at(start), self.at(end)
        return None if first is None or last is None else last - first


def cpu_sampler(roots: list[int]) -> Sampler:
    """CPU seconds of the process trees of ``roots`` (None entries skipped)."""
    pids = [pid for pid in roots if pid]
    return Sampler(lambda: tree_cpu(pids))


def received_sampler(urls: list[str]) -> Sampler:
    """Backplane messages the replicas at ``urls`` took in (nothing sampled
    for servers without the metric)."""
    return Sampler(lambda: received(urls), period=0.5)


def received(urls: list[str]) -> float | None:
    """The backplane messages the replicas at ``urls`` received, summed (None
    for servers without the metric, such as Node's)."""
    total = 0.0
    for url in urls:
        try:
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        values = [line.rsplit(" ", 1)[1] for line in text.splitlines()
                  if line.startswith("chat_backplane_received_total")]
        if not values:
            return None
        total += float(values[0])
    return total
