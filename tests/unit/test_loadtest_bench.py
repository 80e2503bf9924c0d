"""The benchmark runner's pure parts: scenario files, run order, CPU from /proc, the report."""
from __future__ import annotations

import os
import re
import time

import pytest

from loadtest.bench.__main__ import plan
from loadtest.bench.brokers import BrokerKind
from loadtest.bench.procstat import CpuMeter, read_stat
from loadtest.bench.report import connection_table, message_table
from loadtest.bench.scenario import Group, load, names, parse
from loadtest.bench.session import GroupResult, RunResult
from loadtest.histogram import LogHistogram, bucket_bounds, bucket_of
from loadtest.options import Verb
from loadtest.options import parse as parse_options

REQUIRED = {"fan-in", "fan-out", "pairwise", "shared", "storm", "qos1-soak"}


def test_every_required_scenario_ships():
    assert REQUIRED <= set(names())


@pytest.mark.parametrize("name", names())
def test_scenario_groups_are_valid_loadtest_commands(name):
    s = load(name)
    assert s.duration > 0 and s.drain >= 0 and s.groups
    for i, g in enumerate(s.groups):
        opts = parse_options(g.argv("127.0.0.1", 1883, f"g{i}", s.duration))
        assert (opts.verb, opts.clients, opts.duration, opts.json) == (g.verb, g.clients, s.duration, True)
        if g.verb is not Verb.CONN:
            assert (opts.topic, opts.qos, opts.limit) == (g.topic, g.qos, g.limit)
        # bounded: every group stops by itself, by count, by hold, or by the duration
        assert opts.limit or opts.hold is not None or opts.duration


def test_message_scenarios_expect_what_is_published():
    """In each shipped message scenario the subscribers' -L is what the publishers' -L makes the
    broker deliver to them, so a run ends by count, not by the drain timeout.  -L is a group's
    total (emqtt-bench's one counter over all publishers), for publishers and subscribers."""
    for name in names():
        s = load(name)
        pubs, subs = [g for g in s.groups if g.verb is Verb.PUB], s.subscribers
        if not pubs:
            continue
        published = sum(g.limit for g in pubs)
        for g in subs:
            wildcard = "#" in g.topic or "+" in g.topic
            if g.shared:
                assert g.limit == published, name  # each message to one of the group
            elif wildcard or "%i" not in g.topic:
                assert g.limit == published * g.clients, name  # every subscriber gets every message
            else:
                assert g.limit == published, name  # pairwise: each message to its publisher's subscriber


def test_scaling_keeps_limits_consistent():
    s = load("fan-in").scaled(0.1)
    sub, pub = s.groups
    assert sub.limit == pub.limit == 25000
    storm = load("storm").scaled(0.1)
    assert storm.groups[0].clients == 1000


@pytest.mark.parametrize("text, message", [
    ('duration = 1\n[[group]]\nverb = "pub"\nclients = 1\n', "needs a topic"),
    ('duration = 1\n[[group]]\nverb = "bench"\nclients = 1\n', "verb must be"),
    ('duration = 1\n[[group]]\nverb = "conn"\nclients = 1\ncolour = 3\n', "unknown keys"),
    ('duration = 1\nspeed = 2\n', "unknown keys"),
    ('duration = 1\n', "no [[group]]"),
])
def test_bad_scenarios_are_refused(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(text, "x")


def test_plan_alternates_brokers_and_reverses_every_other_round():
    s, m = BrokerKind.SHOAL, BrokerKind.MOSQUITTO
    assert plan([s, m], [1, 2], 2) == [(s, 1, 1), (m, 1, 1), (s, 2, 1), (s, 2, 2), (m, 1, 2), (s, 1, 2)]
    assert plan([m], [1, 2], 1) == [(m, 1, 1)]
    assert plan([s], [1, 4], 1) == [(s, 1, 1), (s, 4, 1)]


def test_cpu_meter_counts_this_process():
    st = read_stat(os.getpid())
    assert st is not None and st.pid == os.getpid() and st.ppid == os.getppid()
    meter = CpuMeter([os.getpid()])
    meter.mark()
    start = time.process_time()
    while time.process_time() - start < 0.3:  # burn CPU, measured by another clock
        pass
    used = meter.sample()
    assert 0.15 <= used <= time.process_time() - start + 0.1
    assert read_stat(2 ** 22 + 1) is None  # no such process


def test_cpu_meter_without_roots_counts_only_descendants():
    meter = CpuMeter([os.getppid()], include_roots=False)
    meter.sample()
    assert (os.getppid(), read_stat(os.getppid()).start) not in meter.last
    assert (os.getpid(), read_stat(os.getpid()).start) in meter.last


def _summary(verb: str, **fields) -> dict:
    h = LogHistogram()
    h.record_many(fields.pop("latencies", []))
    base = {"verb": verb, "received": 0, "sent": 0, "errors": 0, "first_recv_ns": 0, "last_recv_ns": 0,
            "latency_hist": h.to_json(), "connected_max": 0, "settled_s": None, "cpu_s": 0.0, "crashed": [],
            "connect_ms": {"count": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}, "series": [], "start_ns": 0}
    base.update(fields)
    return base


def _exact(ns: int) -> int:
    """The highest value of the bucket of ``ns``: what a percentile of it reads back."""
    return bucket_bounds(bucket_of(ns))[1]


def test_message_table_figures():
    one, two, nine = _exact(1_000_000), _exact(2_000_000), _exact(9_000_000)
    assert [round(v / 1e6, 2) for v in (one, two, nine)] == [1.0, 2.01, 9.04]
    r = RunResult("fan-in", BrokerKind.MOSQUITTO, 1, 1, broker_cpu_s=2.0, generator_cpu_s=1.0)
    r.groups = [
        GroupResult(Group(Verb.SUB, 1, "t/#"), [], 0,
                    _summary("sub", received=1_000_000, first_recv_ns=0, last_recv_ns=4_000_000_000, errors=1,
                             latencies=[one] * 50 + [two] * 49 + [nine])),
        GroupResult(Group(Verb.PUB, 1, "t/1"), [], 0, _summary("pub", sent=1_000_000, errors=2)),
    ]
    row = message_table([r])[2].split(" | ")
    # broker, workers, round, delivered, msgs/s, p50, p90, p99, max, errors, CPU-s, per 1M msgs, generator
    assert row[1:] == ["1", "1", "1,000,000", "250,000", "1.00", "2.01", "2.01", "9.04", "3", "2.00", "2.00",
                       "1.00 |"]


def test_connection_table_figures():
    r = RunResult("storm", BrokerKind.SHOAL, 2, 1, broker_cpu_s=1.5)
    r.groups = [GroupResult(Group(Verb.CONN, 1000), [], 0,
                            _summary("conn", connected_max=1000, settled_s=2.0,
                                     connect_ms={"count": 1000, "p50": 3.0, "p99": 9.5, "max": 12.0}))]
    row = connection_table([r])[2].split(" | ")
    assert row[1:] == ["2", "1", "1,000", "2.00", "500", "3.00", "9.50", "12.00", "0", "1.50", "1.500 |"]
