"""A fake clock and a fake transport for unit tests of a worker's connections
(as uvicorn tests its protocols): the test moves time and reads what was written.

Nothing of Shoal's own is faked: a real Broker and real Connections run on
these, fed bytes written out by hand (tests/support/wire.py).
"""
from __future__ import annotations

import heapq
import itertools


class Timer:
    __slots__ = ("at", "fn", "args", "cancelled")

    def __init__(self, at: float, fn, args) -> None:
        self.at = at
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """The worker's clock (worker.timers.Clock) with time that moves only when told.

    `clock()` is the time; `call_later(delay, fn, *args)` runs fn when
    `advance` moves the time past it, in due order, each seeing its own time."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self._heap: list = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.t

    def call_later(self, delay: float, fn, *args) -> Timer:
        timer = Timer(self.t + max(0.0, delay), fn, args)
        heapq.heappush(self._heap, (timer.at, next(self._seq), timer))
        return timer

    def pending(self) -> list[Timer]:
        return [t for _, _, t in sorted(self._heap) if not t.cancelled]

    def advance(self, dt: float) -> None:
        end = self.t + dt
        heap = self._heap
        while heap and heap[0][0] <= end:
            at, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            self.t = max(self.t, at)
            timer.fn(*timer.args)
        self.t = end


class FakeTransport:
    """What a Connection writes to: bytes collect in `data`; reading, EOF and close are flags."""

    def __init__(self, peer=("127.0.0.1", 40000)) -> None:
        self.data = bytearray()
        self.reading = True
        self.pauses = 0  # pause_reading calls that found it reading
        self.closed = False
        self.eof = False
        self.peer = peer
        self.protocol = None

    def write(self, data) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def writelines(self, parts) -> None:
        for part in parts:
            self.write(part)

    def get_write_buffer_size(self) -> int:
        return 0

    def take(self) -> bytes:
        """What was written since the last take."""
        out = bytes(self.data)
        self.data.clear()
        return out

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name, default=None):
        if name == "peername":
            return self.peer
        return default

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def pause_reading(self) -> None:
        if self.reading:
            self.pauses += 1
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading
