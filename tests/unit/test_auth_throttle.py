"""The failed-login throttle with a moved clock: slowed after N failures,
refused for a while after M, forgotten after the window, bounded in size."""
from worker.auth import BANNED, DELAY, OK, FailureThrottle, address_of
from common.settings import Settings
from worker.handlers import connection_share
from worker.limits import PublishRate, Sparse


def throttle(**kw):
    args = dict(window=60.0, delay_after=3, delay=1.0, ban_after=5, ban_time=30.0, capacity=100)
    args.update(kw)
    return FailureThrottle(**args)


def test_slowed_then_banned_then_free_again():
    t = throttle()
    now = 1000.0
    for i in range(2):
        assert t.failed("10.0.0.1", now + i) == 0
    assert t.check("10.0.0.1", now + 2) == (OK, 0.0)
    assert t.failed("10.0.0.1", now + 2) == 0  # the third
    assert t.check("10.0.0.1", now + 3) == (DELAY, 1.0)
    assert t.check("10.0.0.2", now + 3) == (OK, 0.0)  # other addresses are not touched
    t.failed("10.0.0.1", now + 3)
    assert t.failed("10.0.0.1", now + 4) == 5  # the fifth starts the ban
    verdict, left = t.check("10.0.0.1", now + 5)
    assert verdict == BANNED and left == 29.0
    assert t.failed("10.0.0.1", now + 6) == 0  # failing while banned does not restart it
    assert t.check("10.0.0.1", now + 33.9)[0] == BANNED
    # served: a fresh start, failures before the ban are forgotten
    assert t.check("10.0.0.1", now + 34) == (OK, 0.0)
    assert t.failed("10.0.0.1", now + 35) == 0
    assert t.check("10.0.0.1", now + 35) == (OK, 0.0)


def test_failures_leave_the_window():
    t = throttle(window=10.0)
    for i in range(3):
        t.failed("a", 100.0 + i)
    assert t.check("a", 105.0)[0] == DELAY
    assert t.check("a", 110.5)[0] == OK  # the first two are older than 10 s: one left
    assert t.check("a", 112.5) == (OK, 0.0)
    assert "a" not in t.records  # nothing recent: the record goes


def test_ban_needs_failures_within_the_window():
    t = throttle(window=10.0, delay_after=0, ban_after=3)
    for i in range(10):
        assert t.failed("a", 100.0 + 6 * i) == 0  # one every 6 s: never 3 within 10 s
    assert t.check("a", 200.0) == (OK, 0.0)


def test_zero_turns_a_step_off():
    t = throttle(delay_after=0, ban_after=0)
    for i in range(50):
        assert t.failed("a", 100.0 + i / 10) == 0
    assert t.check("a", 106.0) == (OK, 0.0)


def test_tracked_addresses_are_bounded():
    t = throttle(capacity=3)
    for i, addr in enumerate(["a", "b", "c", "a", "d"]):
        t.failed(addr, 100.0 + i)
    assert list(t.records) == ["c", "a", "d"]  # b was the least recently seen


def test_address_of():
    assert address_of("127.0.0.2:5555") == "127.0.0.2"
    assert address_of("::1:5555") == "::1"
    assert address_of("?") == "?"


def test_publish_rate_bucket():
    r = PublishRate(10.0, now=0.0)
    waits = [r.take(0.0) for _ in range(11)]
    assert waits[:10] == [0.0] * 10  # a burst of one second's worth
    assert abs(waits[10] - 0.1) < 1e-9  # then one more costs a tenth of a second
    assert r.take(0.3) == 0.0  # refilled meanwhile
    slow = PublishRate(0.5, now=0.0)
    assert slow.take(0.0) == 0.0
    assert abs(slow.take(0.0) - 2.0) < 1e-9


def test_connection_shares_add_up():
    for total in (0, 1, 3, 4, 10, 1001):
        for workers in (1, 2, 3, 7):
            st = Settings(workers=workers, max_connections=total)
            shares = [connection_share(st, wid) for wid in range(1, workers + 1)]
            assert sum(shares) == total and max(shares) - min(shares) <= 1


def test_sparse_log():
    s = Sparse(1.0)
    assert s.due(10.0) == 0
    assert [s.due(10.0 + i / 10) for i in range(1, 10)] == [None] * 9
    assert s.due(11.0) == 9
