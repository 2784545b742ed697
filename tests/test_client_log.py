"""The per-client limit on log lines (chat/logs.py ClientLog), unit-tested;
tests/test_hostile_transport.py shows it against a live replica."""

from __future__ import annotations

import logging

from chat.logs import ClientLog


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def make_log(**limits):
    logger = logging.getLogger(f"test.client_log.{id(limits)}")
    logger.propagate = False
    lines = Lines()
    logger.handlers[:] = [lines]
    return ClientLog(logger, **limits), lines.lines


def test_a_flood_from_one_client_is_a_few_lines_and_one_summary():
    log, lines = make_log(burst=3)
    for i in range(1000):
        log.warning("10.0.0.1", "bad frame %d", i)
    assert lines[:3] == ["bad frame 0", "bad frame 1", "bad frame 2"]
    assert len(lines) == 4 and "holding its lines back" in lines[3]
    log.warning("10.0.0.2", "honest mistake")  # another client still gets through
    assert lines[-1] == "honest mistake"


def test_the_count_held_back_comes_with_the_next_interval():
    log, lines = make_log(burst=1, interval=0.0)
    log.warning("10.0.0.1", "first")
    log.warning("10.0.0.1", "second")  # a new interval at once
    assert lines == ["first", "second"]
    log, lines = make_log(burst=1, interval=60.0)
    log.warning("a", "one")
    log.warning("a", "two")
    log.windows["a"][0] -= 61  # the interval is over
    log.warning("a", "three")
    assert lines[-2:] == ["1 more lines caused by a were held back", "three"]


def test_all_clients_together_are_bounded_too():
    """A client that writes a new X-Real-IP per connection (reaching a
    replica without NGINX) is held by the total."""
    log, lines = make_log(burst=10, total=20)
    for i in range(500):
        log.warning(f"10.1.{i // 250}.{i % 250}", "bad frame")
    assert len(lines) == 21 and "all clients" in lines[-1]


def test_the_addresses_remembered_are_bounded_and_the_total_never_forgotten():
    log, lines = make_log(clients=100, total=20)
    for i in range(1000):
        log.warning(f"10.2.{i // 250}.{i % 250}", "x")
    assert len(log.windows) <= 100
    assert len(lines) == 21  # forgetting addresses does not reset the total
