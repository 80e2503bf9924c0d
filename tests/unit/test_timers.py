"""The keepalive wheel, the timer heap and the worker's clock (worker/timers.py),
with deadlines and times the test chooses."""
from __future__ import annotations

import asyncio

from worker.timers import Clock, KeepaliveWheel, TimerHeap


class Conn:
    """What the wheel asks of a connection: its deadline now (None once closed)."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline

    def keepalive_deadline(self) -> float | None:
        return self.deadline


def test_wheel_expires_what_is_due_never_early_at_most_a_second_late():
    w = KeepaliveWheel()
    a, b = Conn(100.5), Conn(103.0)
    w.add(a, a.deadline)
    w.add(b, b.deadline)
    assert w.expire(100.0) == []  # a's second was looked at early: a waits for the next one
    assert w.expire(100.6) == []
    assert w.expire(101.0) == [a]
    assert w.expire(102.9) == []
    assert w.expire(103.0) == [b]
    assert len(w) == 0


def test_wheel_rebuckets_a_connection_that_was_heard_from():
    w = KeepaliveWheel()
    c = Conn(10.0)
    w.add(c, 10.0)
    c.deadline = 25.0  # a packet arrived: the deadline moved, the bucket did not
    assert w.expire(10.0) == []
    assert len(w) == 1
    assert w.expire(24.0) == []
    assert w.expire(25.0) == [c]


def test_wheel_catches_up_over_seconds_without_a_tick():
    w = KeepaliveWheel()
    conns = [Conn(50.0 + i) for i in range(10)]
    for c in conns:
        w.add(c, c.deadline)
    assert w.expire(40.0) == []
    assert w.expire(1000.0) == conns  # the loop sat still for 16 minutes: all due, in order


def test_wheel_lets_go_of_closed_connections():
    w = KeepaliveWheel()
    a, b = Conn(5.0), Conn(5.0)
    w.add(a, 5.0)
    w.add(b, 5.0)
    w.discard(a)
    b.deadline = None  # closed, or keepalive off
    assert w.expire(6.0) == []
    assert len(w) == 0


def test_wheel_deadline_in_the_past_is_due_in_the_next_second():
    w = KeepaliveWheel()
    w.expire(100.0)
    c = Conn(90.0)
    w.add(c, 90.0)  # the wheel is past second 90 (and 100): the next second looked at takes it
    assert w.expire(100.5) == []
    assert w.expire(101.0) == [c]


def test_timer_heap_runs_due_in_order_and_honours_cancel():
    h = TimerHeap()
    ran = []
    h.schedule("a", 10.0, lambda: ran.append("a"))
    h.schedule("b", 5.0, lambda: ran.append("b"))
    h.schedule("c", 7.0, lambda: ran.append("c"))
    h.cancel("c")
    assert "c" not in h and len(h) == 2
    assert h.run_due(4.9) == 0
    assert h.run_due(10.0) == 2
    assert ran == ["b", "a"]


def test_timer_heap_rescheduling_a_key_replaces_it():
    h = TimerHeap()
    ran = []
    h.schedule("s", 5.0, lambda: ran.append(5))
    h.schedule("s", 8.0, lambda: ran.append(8))
    assert h.run_due(6.0) == 0
    assert h.run_due(8.0) == 1 and ran == [8]


def test_clock_reads_its_time_source_and_waits_on_the_loop():
    t = [500.0]
    clock = Clock(lambda: t[0])
    assert clock() == 500.0
    t[0] = 501.5
    assert clock() == 501.5

    async def run():
        done = asyncio.get_running_loop().create_future()
        clock.call_later(0, done.set_result, "ran")
        return await asyncio.wait_for(done, 10)

    assert asyncio.run(run()) == "ran"
