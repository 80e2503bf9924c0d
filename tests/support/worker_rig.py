"""A worker of a two-worker node without ZeroMQ or circusd, for unit tests of the router link:
the real Broker and RouterBridge, the bridge on a fake DEALER socket (the router's ops fed in,
the worker's ops collected) and a fake loop whose timers run on a fake clock
(tests/support/fake_link.py). Connections are real, fed MQTT bytes written out by hand."""
from __future__ import annotations

import asyncio

from common.settings import Settings
from core import ops as o
from tests.support.fake_link import FakeClock, FakeDealer, FakeLoop
from tests.support.fakes import FakeTransport
from worker.broker import Broker
from worker.protocol import Connection
from worker.router_link import RouterBridge


class Worker:
    """Worker 1 of a two-worker node; registered with a router whose epoch is 7 unless not
    `registered`. `settings` are Settings fields (workers=2, persistence off by default)."""

    def __init__(self, registered: bool = True, **settings) -> None:
        self.clock = FakeClock()
        self.loop = FakeLoop(self.clock)
        self.sock = FakeDealer()
        st = Settings(**{"workers": 2, "persistence": False, **settings})
        self.bridge = RouterBridge(st, 1, clock=self.clock, sock=self.sock)
        self.broker = Broker(st, self.clock, bridge=self.bridge)
        if registered:
            self.bridge.connect(loop=self.loop)
            self.loop.run()
            self.router(o.Welcome(7, 0, [], []))

    def router(self, *ops) -> None:
        """Ops from the router arrive (the zmq fd is readable)."""
        self.sock.feed(*ops)
        self.bridge._readable()
        self.loop.run()

    def ops(self, kind=None) -> list:
        self.loop.run()
        return [op for op in self.sock.ops() if kind is None or op.__class__ is kind]

    def claims(self) -> list:
        """The CLAIMs sent: a CLAIM close behind a send waits the batch interval
        (SHOAL_ROUTER_BATCH_MS) for company, so that much time passes first."""
        self.loop.advance(self.bridge.batch_delay)
        return self.ops(o.Claim)

    def connection(self, connect: bytes) -> tuple[Connection, FakeTransport]:
        """A client whose CONNECT (bytes) was read; its claim waits for the router."""
        conn, t = Connection(self.broker), FakeTransport()
        conn.connection_made(t)
        conn.data_received(connect)
        return conn, t


def run(fn):
    """Connections need a running asyncio loop for their own timers; the bridge has the fake one."""
    async def main():
        fn()
    asyncio.run(main())
