"""Fakes for unit tests of the node protocol's speakers (Router, RouterBridge): a clock the
test moves, an event loop whose timers run on that clock, and ZeroMQ sockets that hand the
test what was sent (decoded into typed ops) and take what the test feeds in. Nothing here
replaces a part of Shoal: only time, the loop's timers and the socket."""
from __future__ import annotations

import heapq
import itertools

import zmq

from core import ops as o
from core.ops import decode, pack, unpack


def singles(w) -> list:
    """The typed ops of one wire op, a batched one (CONFIRMS, DELIVERED_MANY: issue 10's hot
    path) as the single ops it stands for, in order: the tests speak of confirms, whichever
    form carried them (tests/unit/test_hotpath.py checks the batched forms themselves)."""
    op = decode(w)
    if op.__class__ is o.Confirms:
        return [o.Confirm(t, op.ok) for t in op.tokens]
    if op.__class__ is o.DeliveredMany:
        return [o.Delivered(r) for r in op.refs]
    return [op]


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class _Handle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """call_soon / call_later on a FakeClock; run() runs what is due (advance(dt) moves time)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._timers: list = []
        self._seq = itertools.count()
        self.readers: dict = {}

    def time(self) -> float:
        return self.clock.t

    def call_soon(self, fn, *args):
        return self.call_later(0.0, fn, *args)

    def call_later(self, delay: float, fn, *args):
        h = _Handle()
        heapq.heappush(self._timers, (self.clock.t + delay, next(self._seq), h, fn, args))
        return h

    def add_reader(self, fd, fn) -> None:
        self.readers[fd] = fn

    def remove_reader(self, fd) -> None:
        self.readers.pop(fd, None)

    def run(self) -> None:
        """Run every callback due by now (also those that become due while running)."""
        while self._timers and self._timers[0][0] <= self.clock.t:
            _, _, h, fn, args = heapq.heappop(self._timers)
            if not h.cancelled:
                fn(*args)

    def advance(self, dt: float) -> None:
        """Move the clock in steps, running each timer at its own time."""
        end = self.clock.t + dt
        while self._timers and self._timers[0][0] <= end:
            self.clock.t = max(self.clock.t, self._timers[0][0])
            self.run()
        self.clock.t = end
        self.run()


class FakeDealer:
    """The member's side: send() records the typed ops of each message; feed() queues a
    message from the router for recv(); full makes send raise zmq.Again (a router that cannot
    take more)."""

    def __init__(self) -> None:
        self.sent: list[list] = []  # one list of typed ops per send
        self.raw: list[bytes] = []  # each message as sent
        self.inbox: list[bytes] = []
        self.full = False
        self.endpoint = None

    def connect(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def getsockopt(self, opt):
        if opt == zmq.EVENTS:
            return zmq.POLLIN if self.inbox else 0
        return -1  # zmq.FD: the fake loop only keys its readers by it

    get = getsockopt  # (pyzmq's name the hot paths use)

    def send(self, data: bytes, flags: int = 0) -> None:
        if self.full:
            raise zmq.Again()
        self.raw.append(data)
        self.sent.append([op for w in unpack(data) for op in singles(w)])

    def recv(self, flags: int = 0) -> bytes:
        if not self.inbox:
            raise zmq.Again()
        return self.inbox.pop(0)

    def feed(self, *ops) -> None:
        self.inbox.append(pack(list(ops)))

    def close(self, linger=None) -> None:
        pass

    def ops(self) -> list:
        """Every op sent so far, in order; and forget them."""
        out = [op for batch in self.sent for op in batch]
        self.sent.clear()
        return out


class FakeRouterSocket:
    """The router's side: send_multipart records (ident, typed op) pairs; unreachable idents
    raise EHOSTUNREACH as ROUTER_MANDATORY does."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []
        self.raw: list[tuple[bytes, bytes]] = []  # (ident, message) as sent
        self.unreachable: set[bytes] = set()
        self.slow: set[bytes] = set()

    def send_multipart(self, frames, flags: int = 0) -> None:
        ident, data = frames
        if ident in self.slow:
            raise zmq.Again()
        if ident in self.unreachable:
            raise zmq.ZMQError(zmq.EHOSTUNREACH)
        self.raw.append((ident, data))
        for w in unpack(data):
            for op in singles(w):
                self.sent.append((ident, op))

    def close(self, linger=None) -> None:
        pass

    def take(self, ident: bytes | None = None, kind=None) -> list:
        """The ops sent (to ident, of class kind) since the last take; all others are kept."""
        got, keep = [], []
        for to, op in self.sent:
            if (ident is None or to == ident) and (kind is None or op.__class__ is kind):
                got.append(op if ident is not None else (to, op))
            else:
                keep.append((to, op))
        self.sent = keep
        return got

    def clear(self) -> None:
        self.sent.clear()
        self.raw.clear()
