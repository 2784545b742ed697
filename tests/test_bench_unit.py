"""chat-bench's pure logic: plan, stamps, schedule, percentiles, merging, report,
and the frames its lean receivers read (:mod:`chat.tools.wire`).

No server and no event loop: these functions decide what the benchmark
sends and what its numbers mean, so they are checked on their own.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter

import pytest

from chat import jsonio
from chat.tools import wire
from chat.tools.bench import build_parser, plan_from
from chat.tools.benchrun import (
    Plan,
    Tally,
    build_report,
    expected_deliveries,
    format_report,
    latency_summary,
    merge_tallies,
    percentile,
)
from chat.tools.load import Stamp, StampFinder, decode_stamp, encode_stamp, send_times


def make_plan(**overrides) -> Plan:
    values = dict(urls=("http://a", "http://b"), clients=10, rooms=2, senders=4, rate=2.0,
                  duration=5.0, warmup=1.0, processes=3, run_id="abc123")
    values.update(overrides)
    return Plan(**values)


# -- plan ------------------------------------------------------------------------

def test_clients_are_spread_over_rooms_round_robin():
    plan = make_plan(clients=7, rooms=3)
    assert [plan.room_index(i) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [plan.members(r) for r in range(3)] == [3, 2, 2]
    assert plan.room(4) == "bench-abc123-1"


def test_room_names_fit_the_protocol_limit():
    plan = make_plan(run_id="ffffff", rooms=10_000, clients=10_000)
    assert len(plan.room(9_999)) <= 32


def test_every_room_has_members_on_every_url():
    # With as many rooms as URLs, plain round-robin would pin each room to
    # one URL and no message would cross replicas.
    plan = make_plan(clients=8, rooms=2, urls=("http://a", "http://b"))
    for room in range(2):
        urls = {plan.url(i) for i in range(8) if plan.room_index(i) == room}
        assert urls == {"http://a", "http://b"}


def test_spread_puts_each_room_on_neighbouring_urls():
    urls = tuple(f"http://r{i}" for i in range(5))
    plan = make_plan(clients=500, rooms=250, urls=urls, spread=2)
    for room in range(250):
        members = [plan.url(i) for i in range(500) if plan.room_index(i) == room]
        assert members == [urls[room % 5], urls[(room + 1) % 5]]
    # every URL gets its share of clients
    assert {u: sum(plan.url(i) == u for i in range(500)) for u in urls} == dict.fromkeys(
        urls, 100)
    with pytest.raises(SystemExit):
        parse("--url", "http://a", "--spread", "2")


def test_one_room_uses_urls_round_robin():
    plan = make_plan(clients=6, rooms=1, urls=("http://a", "http://b", "http://c"))
    assert [plan.url(i) for i in range(6)] == ["http://a", "http://b", "http://c"] * 2


def test_workers_partition_the_clients():
    plan = make_plan(clients=10, processes=3)
    shares = [plan.clients_of(k) for k in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(10))
    assert [len(share) for share in shares] == [4, 3, 3]
    assert all(plan.worker(i) == k for k, share in enumerate(shares) for i in share)


def test_senders_are_the_first_clients_and_spread_over_rooms_and_workers():
    plan = make_plan(clients=10, rooms=2, senders=4, processes=2)
    senders = [i for i in range(10) if plan.is_sender(i)]
    assert senders == [0, 1, 2, 3]
    assert Counter(plan.room_index(i) for i in senders) == {0: 2, 1: 2}
    assert Counter(plan.worker(i) for i in senders) == {0: 2, 1: 2}


def test_only_receivers_are_lean_and_only_by_default():
    plan = make_plan(clients=6, senders=2)
    assert [plan.is_lean(i) for i in range(6)] == [False, False, True, True, True, True]
    full = make_plan(clients=6, senders=2, full_clients=True)
    assert not any(full.is_lean(i) for i in range(6))


def test_sender_offsets_stagger_over_one_interval():
    plan = make_plan(senders=4, rate=2.0)
    offsets = [plan.sender_offset(i) for i in range(4)]
    assert offsets == pytest.approx([0.0, 0.125, 0.25, 0.375])
    assert max(offsets) < 1 / plan.rate


# -- schedule --------------------------------------------------------------------

def test_send_times_follow_the_rate_from_the_offset():
    times = list(send_times(start=100.0, rate=4.0, offset=0.1, end=101.0))
    assert times == pytest.approx([100.1, 100.35, 100.6, 100.85])


def test_send_times_total_is_rate_times_duration():
    times = list(send_times(start=0.0, rate=7.0, offset=0.05, end=10.0))
    assert len(times) == 70


def test_send_times_do_not_drift():
    # Computed from the index: the 10,000th instant is exact, not the sum of
    # 10,000 rounded intervals.
    times = list(send_times(start=0.0, rate=1000.0, offset=0.0, end=10.0))
    assert len(times) == 10_000
    assert times[-1] == pytest.approx(9.999, abs=1e-12)


def test_send_times_empty_when_offset_is_past_the_end():
    assert list(send_times(start=0.0, rate=1.0, offset=2.0, end=1.0)) == []


# -- stamps ----------------------------------------------------------------------

@pytest.mark.parametrize("warmup", [True, False])
def test_stamp_round_trip(warmup):
    stamp = Stamp("abc123", 7, 42, 1_795_000_000_123_456_789, warmup)
    text = encode_stamp(stamp)
    assert decode_stamp(text) == stamp
    assert decode_stamp(text, "abc123") == stamp


def test_stamp_fits_a_chat_message():
    text = encode_stamp(Stamp("ffffff", 99_999, 10**9, 2**63 - 1, False))
    assert len(text) <= 2000
    assert text == text.strip()


@pytest.mark.parametrize("text", [
    "hello",
    "",
    None,
    42,
    "bench1 abc123 1 2 3",           # too short
    "bench1 abc123 1 2 3 x",         # bad phase
    "bench1 abc123 one 2 3 m",       # not a number
    "bench1 abc123 1 2 3 m extra",   # too long
    "bench10 abc123 1 2 3 m",        # another mark
])
def test_foreign_texts_are_not_stamps(text):
    assert decode_stamp(text) is None


def test_stamps_of_another_run_are_ignored():
    text = encode_stamp(Stamp("other1", 1, 2, 3, False))
    assert decode_stamp(text, "abc123") is None
    assert decode_stamp(text) is not None


# -- stamps in raw frames (lean receivers) ---------------------------------------

def message_frame(text, dumps=jsonio.dumps, **fields) -> str:
    """A ``message`` event as the server writes it (keys in its order)."""
    message = {"id": "f00d", "room": "bench-abc123-0", "name": "bench-3", "text": text,
               "server": "replica-1", "ts": 1_795_000_000_000}
    message.update(fields)
    return "42" + dumps(["message", message])


def std_dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize("dumps", [jsonio.dumps, std_dumps], ids=["orjson", "json"])
@pytest.mark.parametrize("warmup", [True, False])
def test_stamp_finder_agrees_with_decode_stamp(dumps, warmup):
    stamp = Stamp("abc123", 7, 42, 1_795_000_000_123_456_789, warmup)
    frame = message_frame(encode_stamp(stamp), dumps)
    assert StampFinder("abc123")(frame) == stamp == decode_stamp(encode_stamp(stamp), "abc123")


def test_stamp_finder_ignores_key_order():
    stamp = Stamp("abc123", 1, 2, 3, False)
    frame = "42" + jsonio.dumps(["message", {"text": encode_stamp(stamp), "id": "x"}])
    assert StampFinder("abc123")(frame) == stamp


@pytest.mark.parametrize("text", [
    "hello",
    "bench1 abc123 1 2 3",                # too short
    "bench1 abc123 1 2 3 x",              # bad phase
    "bench1 abc123 one 2 3 m",            # not a number
    "bench1 abc123 1 2 3 m extra",        # too long
    "say bench1 abc123 1 2 3 m",          # not the whole text
    "bench10 abc123 1 2 3 m",             # another mark
    encode_stamp(Stamp("other1", 1, 2, 3, False)),  # another run
    'x","text":"bench1 abc123 1 2 3 m',   # a text pretending to be a key
])
def test_stamp_finder_ignores_what_decode_stamp_ignores(text):
    assert decode_stamp(text, "abc123") is None
    assert StampFinder("abc123")(message_frame(text)) is None


def test_stamp_finder_only_reads_the_text():
    # The room name holds the run id, and a name may look like a stamp.
    fake = encode_stamp(Stamp("abc123", 1, 2, 3, False))
    assert StampFinder("abc123")(message_frame("hi", name=fake, room=fake)) is None


def test_deliveries_count_latency_and_order_per_sender():
    t, last_seq = Tally(), {}
    sent_ns = 1_000_000_000
    assert t.count_delivery(last_seq, Stamp("r", 1, 0, sent_ns), sent_ns + 2_500_000)
    assert t.count_delivery(last_seq, Stamp("r", 2, 5, sent_ns), sent_ns + 1_000_000)
    assert t.count_delivery(last_seq, Stamp("r", 1, 0, sent_ns), sent_ns)  # duplicate
    assert t.count_delivery(last_seq, Stamp("r", 2, 4, sent_ns), sent_ns)  # out of order
    assert t.count_delivery(last_seq, Stamp("r", 1, 1, sent_ns), sent_ns)
    assert not t.count_delivery(last_seq, Stamp("r", 1, 9, sent_ns, warmup=True), sent_ns)
    assert not t.count_delivery(last_seq, None, sent_ns)
    assert (t.received, t.out_of_order) == (5, 2)
    assert list(t.latencies_ms)[:2] == [2.5, 1.0]
    assert last_seq == {1: 1, 2: 5}


# -- frames (chat.tools.wire) ------------------------------------------------------------

def test_websocket_url_keeps_the_query_and_drops_the_path():
    assert wire.websocket_url("http://127.0.0.1:8080", "k1") == (
        "ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket&sticky=k1")
    assert wire.websocket_url("https://chat.example/app/?a=1", "k2") == (
        "wss://chat.example/socket.io/?a=1&EIO=4&transport=websocket&sticky=k2")


def test_connect_frame_carries_the_auth():
    frame = wire.connect_frame("bench-3", 'room "q"')
    assert frame.startswith("40")
    assert json.loads(frame[2:]) == {"name": "bench-3", "room": 'room "q"'}


@pytest.mark.parametrize(("frame", "kind", "data"), [
    ('0{"sid":"a","pingInterval":25000}', wire.OPEN, {"sid": "a", "pingInterval": 25000}),
    ("0", wire.OPEN, {}),
    ("2", wire.PING, ""),
    ("2probe", wire.PING, "probe"),
    ('40{"sid":"b"}', wire.CONNECTED, None),
    ("40", wire.CONNECTED, None),
    ('44{"message":"name must be 1 to 32 characters"}', wire.REFUSED,
     "name must be 1 to 32 characters"),
    ("44", wire.REFUSED, "no reason given"),
    ("44not json", wire.REFUSED, "no reason given"),
    ('42["welcome",{"server":"replica-2","room":"r"}]', wire.WELCOME,
     {"server": "replica-2", "room": "r"}),
    ('42["welcome",null]', wire.WELCOME, {}),
    ('42["system",{"kind":"join","text":"bench1 abc123 1 2 3 m"}]', wire.OTHER, None),
    ('42["typing",{"name":"a","typing":true}]', wire.OTHER, None),
    ("41", wire.CLOSED, None),
    ("1", wire.CLOSED, None),
    ("3", wire.OTHER, None),
    ("6", wire.OTHER, None),
    ("", wire.OTHER, None),
])
def test_parse_frame(frame, kind, data):
    assert wire.parse_frame(frame) == (kind, data)


def test_message_frames_are_left_raw():
    frame = message_frame("bench1 abc123 1 2 3 m")
    assert wire.parse_frame(frame) == (wire.MESSAGE, frame)


def test_pong_echoes_the_ping():
    assert wire.pong_frame() == "3"
    assert wire.pong_frame("probe") == "3probe"


# -- percentiles -----------------------------------------------------------------

def test_percentile_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1


def test_percentile_small_samples():
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0], 50) == 1.0
    assert percentile([1.0, 2.0], 51) == 2.0


def test_percentile_rejects_bad_q():
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary_sorts_and_rounds():
    summary = latency_summary([3.0, 1.0, 2.0, 10.123456])
    assert summary == {"p50": 2.0, "p90": 10.123, "p99": 10.123, "max": 10.123}
    assert latency_summary([]) == {"p50": None, "p90": None, "p99": None, "max": None}


# -- merging and the report ------------------------------------------------------

def tally(**values) -> Tally:
    t = Tally()
    for key, value in values.items():
        setattr(t, key, value)
    return t


def test_merge_adds_counts_and_concatenates_samples():
    a = tally(clients=5, servers=Counter({"r1": 3, "r2": 2}), sent=10, sent_warmup=2,
              sent_by_room=Counter({0: 10}), acks_ok=9, ack_errors=Counter({"slow": 1}),
              received=50, out_of_order=1, disconnects=0,
              latencies_ms=array("d", [1.0, 2.0]), ack_ms=array("d", [0.5]),
              max_lag_ms=3.0, cpu_s=0.2)
    b = tally(clients=5, servers=Counter({"r2": 5}), sent=4, sent_by_room=Counter({1: 4}),
              acks_ok=2, ack_errors=Counter({"slow": 1, "gone": 1}), received=20,
              disconnects=1, latencies_ms=array("d", [3.0]), max_lag_ms=1.0, cpu_s=0.3)
    total = merge_tallies([a, b])
    assert total.clients == 10
    assert total.servers == {"r1": 3, "r2": 7}
    assert (total.sent, total.sent_warmup) == (14, 2)
    assert total.sent_by_room == {0: 10, 1: 4}
    assert total.acks_ok == 11
    assert total.ack_errors == {"slow": 2, "gone": 1}
    assert total.acks_pending == 0
    assert (total.received, total.out_of_order, total.disconnects) == (70, 1, 1)
    assert sorted(total.latencies_ms) == [1.0, 2.0, 3.0]
    assert list(total.ack_ms) == [0.5]
    assert total.max_lag_ms == 3.0
    assert total.cpu_s == pytest.approx(0.5)
    # The inputs are left alone.
    assert a.sent == 10 and list(a.latencies_ms) == [1.0, 2.0]


def test_merge_of_nothing_is_empty():
    total = merge_tallies([])
    assert total.sent == 0 and total.received == 0 and len(total.latencies_ms) == 0


def test_expected_deliveries_count_every_member_including_the_sender():
    plan = make_plan(clients=7, rooms=3)  # members 3, 2, 2
    assert expected_deliveries(plan, Counter({0: 10, 2: 5})) == 10 * 3 + 5 * 2


def test_report_rates_ratio_and_spread():
    plan = make_plan(clients=4, rooms=1, senders=2, rate=1.0, duration=5.0, processes=1)
    t = tally(clients=4, servers=Counter({"replica-2": 2, "replica-1": 2}), sent=10,
              sent_by_room=Counter({0: 10}), acks_ok=9, ack_errors=Counter({"rate limit": 1}),
              received=38, latencies_ms=array("d", [float(i) for i in range(1, 39)]),
              ack_ms=array("d", [1.0] * 9), cpu_s=0.5)
    report = build_report(plan, t, window=5.0, wall=10.0, cpu_total=2.0)
    assert report["sent_per_s"] == 2.0
    assert report["expected"] == 40
    assert report["expected_per_s"] == 8.0
    assert report["delivered_per_s"] == pytest.approx(7.6)
    assert report["delivery_ratio"] == pytest.approx(0.95)
    assert report["latency_ms"]["p50"] == 19.0
    assert report["latency_ms"]["max"] == 38.0
    assert report["ack_errors"] == 1 and report["ack_error_kinds"] == {"rate limit": 1}
    assert report["acks_missing"] == 0
    assert report["replicas"] == {"replica-1": 2, "replica-2": 2}
    assert report["cpu_measuring_pct"] == pytest.approx(10.0)
    assert report["cpu_run_pct"] == pytest.approx(20.0)
    json.dumps(report)  # one JSON object, as --json prints it


def test_report_of_an_empty_run_has_no_ratio():
    plan = make_plan(processes=1)
    report = build_report(plan, Tally(), window=0.0, wall=1.0, cpu_total=0.1)
    assert report["delivery_ratio"] is None
    assert report["sent_per_s"] == 0.0
    assert report["latency_ms"]["p99"] is None
    assert "-" in format_report(report)


def test_table_names_every_figure():
    plan = make_plan(clients=20, rooms=1, senders=2, rate=5.0, duration=3.0, processes=1)
    t = tally(clients=20, servers=Counter({"replica-1": 10, "replica-2": 10}), sent=30,
              sent_by_room=Counter({0: 30}), acks_ok=30, received=600,
              latencies_ms=array("d", [2.0] * 600), ack_ms=array("d", [1.0] * 30))
    table = format_report(build_report(plan, t, window=3.0, wall=6.0, cpu_total=0.6))
    for label in ("offered", "delivered", "latency ms", "acks", "replicas", "generator"):
        assert label in table
    assert "600 of 600 (100.00%)" in table
    assert "replica-1 10, replica-2 10" in table
    assert "200.0 deliveries/s expected" in table


# -- command line ----------------------------------------------------------------

def parse(*argv) -> Plan:
    parser = build_parser()
    return plan_from(parser.parse_args(list(argv)), parser)


def test_defaults(monkeypatch, tmp_path):
    from chat.tools import session

    monkeypatch.delenv("CHAT_URL", raising=False)
    monkeypatch.setattr(session, "CLUSTER_STATE", tmp_path / "none.json")  # no local cluster
    plan = parse()
    assert plan.urls == ("http://localhost:8080",)
    assert plan.spread == 0
    assert (plan.clients, plan.rooms, plan.senders, plan.rate) == (100, 1, 10, 1.0)
    assert (plan.duration, plan.warmup, plan.processes) == (10.0, 2.0, 1)
    assert len(plan.run_id) == 6


def test_receivers_are_lean_unless_full_clients():
    assert parse().full_clients is False
    assert parse("--full-clients").full_clients is True


def test_repeated_urls_are_kept_in_order():
    plan = parse("--url", "http://127.0.0.1:1", "--url", "http://127.0.0.1:2")
    assert plan.urls == ("http://127.0.0.1:1", "http://127.0.0.1:2")


@pytest.mark.parametrize("argv", [
    ["--senders", "11", "--clients", "10"],
    ["--rooms", "0"],
    ["--processes", "3", "--clients", "2", "--senders", "1"],
    ["--rate", "0"],
    ["--duration", "-1"],
    ["--url", "localhost:8080"],
])
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    assert "chat-bench: error:" in capsys.readouterr().err


# -- what the servers spent (sweep) ------------------------------------------------

def test_sampler_interpolates_what_the_window_alone_added():
    from chat.tools.serverstats import Sampler

    sampler = Sampler(lambda: None)
    sampler.samples = [(10.0, 100.0), (11.0, 110.0), (12.0, 130.0)]
    assert sampler.between(10.5, 11.5) == pytest.approx(15.0)  # 105 -> 120
    assert sampler.between(10.0, 12.0) == pytest.approx(30.0)
    assert sampler.between(9.0, 11.0) is None  # before the first sample: unknown


def test_tree_cpu_counts_a_process_and_its_children():
    import os
    import subprocess
    import sys

    from chat.tools.serverstats import tree_cpu

    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time\n"
                               f"subprocess.Popen([sys.executable, '-c', {busy!r}])\n"
                               "time.sleep(3)\n"])
    try:
        import time

        time.sleep(1.5)  # the child has burnt its 0.3 s by now
        assert tree_cpu([parent.pid]) >= 0.3
        assert tree_cpu([os.getpid()]) > 0
    finally:
        parent.kill()
        parent.wait()
