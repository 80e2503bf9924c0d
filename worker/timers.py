"""Time in the worker: one clock, a keepalive wheel and a timer heap.

The clock is read once per tick; tests drive `tick(now)` with their own times.
Everything in the worker that reads the time or waits for it (the broker's
now, the keepalive wheel, the CONNECT timeout, the linger of a closed socket,
the publish rate limit) goes through the one `Clock` the broker holds, so a
test hands the broker a fake one (tests/support/fakes.FakeClock) and moves
time instead of waiting for it.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Callable


class Clock:
    """The worker's clock: `clock()` is the time (monotonic seconds) and
    `clock.call_later(delay, fn, *args)` runs fn on the event loop after delay."""

    __slots__ = ("time",)

    def __init__(self, time: Callable[[], float] = time.monotonic) -> None:
        self.time = time

    def __call__(self) -> float:
        return self.time()

    def call_later(self, delay: float, fn: Callable, *args):
        """A handle with cancel(); raises RuntimeError with no running event loop."""
        return asyncio.get_running_loop().call_later(delay, fn, *args)


class KeepaliveWheel:
    """Connections bucketed by the whole second of their deadline (O(1) per check).

    A connection is re-checked when its bucket comes due: if it has received a
    packet since, it moves to its new bucket; otherwise it has expired. A
    connection that closes leaves its bucket at once (`discard`): left there it
    would keep its buffers (a partial packet of up to SHOAL_MAX_PACKET_SIZE)
    until 1.5 times its keepalive had passed, up to 27 hours.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, dict] = {}  # second -> {conn: None}, in insertion order
        self._where: dict = {}  # conn -> the second of its bucket
        self._cursor: int | None = None

    def __len__(self) -> int:
        return len(self._where)

    def add(self, conn, deadline: float) -> None:
        sec = int(deadline)  # due at the first tick in or after this second (re-bucketed if early)
        if self._cursor is not None and sec < self._cursor:
            sec = self._cursor
        self.discard(conn)
        self._buckets.setdefault(sec, {})[conn] = None
        self._where[conn] = sec

    def discard(self, conn) -> None:
        sec = self._where.pop(conn, None)
        if sec is None:
            return
        bucket = self._buckets.get(sec)
        if bucket is not None:
            bucket.pop(conn, None)
            if not bucket:
                del self._buckets[sec]

    def expire(self, now: float) -> list:
        """Connections whose keepalive deadline passed (re-bucketing the rest)."""
        sec = int(now)
        if self._cursor is None:
            self._cursor = min(sec, min(self._buckets, default=sec))  # never start in the future
        due = []
        where = self._where
        while self._cursor <= sec:
            bucket = self._buckets.pop(self._cursor, None)
            self._cursor += 1
            if not bucket:
                continue
            for conn in bucket:
                del where[conn]
                deadline = conn.keepalive_deadline()
                if deadline is None:
                    continue  # closed, or keepalive switched off
                if deadline <= now:
                    due.append(conn)
                else:
                    self.add(conn, deadline)
        return due


class TimerHeap:
    """Cancellable one-shot timers keyed by an object (will delay, session expiry)."""

    def __init__(self) -> None:
        self._heap: list = []
        self._live: dict = {}
        self._seq = itertools.count()

    def schedule(self, key, at: float, fn: Callable[[], None]) -> None:
        token = next(self._seq)
        self._live[key] = token
        heapq.heappush(self._heap, (at, token, key, fn))

    def cancel(self, key) -> None:
        self._live.pop(key, None)

    def __contains__(self, key) -> bool:
        return key in self._live

    def run_due(self, now: float) -> int:
        n = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, token, key, fn = heapq.heappop(heap)
            if self._live.get(key) != token:
                continue
            del self._live[key]
            fn()
            n += 1
        return n

    def __len__(self) -> int:
        return len(self._live)
