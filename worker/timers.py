"""Time in the worker: one clock, a keepalive wheel and a timer heap.

The clock is read once per tick; tests drive `tick(now)` with their own times.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Callable


class KeepaliveWheel:
    """Connections bucketed by the whole second of their deadline (O(1) per check).

    A connection is re-checked when its bucket comes due: if it has received a
    packet since, it moves to its new bucket; otherwise it has expired.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, list] = {}
        self._cursor: int | None = None

    def add(self, conn, deadline: float) -> None:
        sec = int(deadline)  # due at the first tick in or after this second (re-bucketed if early)
        if self._cursor is not None and sec < self._cursor:
            sec = self._cursor
        self._buckets.setdefault(sec, []).append(conn)

    def expire(self, now: float) -> list:
        """Connections whose keepalive deadline passed (re-bucketing the rest)."""
        sec = int(now)
        if self._cursor is None:
            self._cursor = min(sec, min(self._buckets, default=sec))  # never start in the future
        due = []
        while self._cursor <= sec:
            bucket = self._buckets.pop(self._cursor, None)
            self._cursor += 1
            if not bucket:
                continue
            for conn in bucket:
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
