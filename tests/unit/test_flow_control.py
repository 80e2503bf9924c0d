"""One owner of a connection's reading (issue 9, point 4): push back, never drop.

A real Broker with a real RouterBridge whose DEALER socket has no router to
talk to: every send finds no peer (zmq.Again), which is how a full router
link looks to a worker, so the link is blocked and pauses its clients. Then a
client's own reason to pause goes away (its CONNECT is granted, its
SUBSCRIBE's routes are in, its publish rate bucket refills): it must stay
paused while the link is blocked, and be read again once the link drains.
The router's answers (GRANT, SYNCED) are fed to the bridge as the router
sends them; the test's ROUTER socket, bound and connected, drains the link.
"""
from __future__ import annotations

import asyncio
import itertools
import time

import zmq

from common.settings import Settings
from core.ops import Grant, Synced
from mqtt.packets import Connack, PingResp, PubAck, SubAck
from tests.support import wire
from tests.support.fakes import FakeClock, FakeTransport
from worker.broker import Broker
from worker.protocol import Connection
from worker.router_link import RouterBridge

# a new inproc endpoint for every drain_link(): libzmq unbinds a closed socket's endpoint
# in its own thread, so binding the same name again at once failed now and then (EADDRINUSE)
_ENDPOINTS = itertools.count()


async def until(cond, what: str, timeout: float = 20.0) -> None:
    """Let the event loop run until cond() holds (the zmq retry runs on it), with a deadline."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.001)  # one pass of the loop: the bridge's 5 ms retry is a loop timer


class Rig:
    """A worker of a two-worker node, its router link blocked from the first send."""

    def __init__(self, **settings) -> None:
        self.clock = FakeClock()
        st = Settings(persistence=False, workers=2, **settings)
        self.bridge = RouterBridge(st, 1)
        self.broker = Broker(st, self.clock, bridge=self.bridge)
        # what connect() does, but no router is connected: the link is full from the start
        self.bridge.loop = asyncio.get_running_loop()
        self.router = None
        self.endpoint = ""  # the inproc endpoint of the router drain_link() made

    def open(self, version: int = 5) -> tuple[Connection, FakeTransport]:
        conn, t = Connection(self.broker), FakeTransport()
        conn.connection_made(t)
        return conn, t

    def grant(self, client_id: str) -> None:
        """The router's answer to the client's CLAIM: the id is this worker's, no session elsewhere."""
        (req,) = [r for r, (_, connect) in self.bridge.claims.items() if connect.client_id == client_id]
        self.bridge.handle(Grant(client_id, req, None))

    def synced(self) -> None:
        """The router's answer to every SYNC: all workers have the routes."""
        for token in list(self.bridge.syncs):
            self.bridge.handle(Synced(token))

    async def drain_link(self) -> None:
        """A router to take what the worker sends: the link unblocks on its next retry."""
        ctx = zmq.Context.instance()
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"inproc://flow-{next(_ENDPOINTS)}"
        self.router.bind(self.endpoint)
        self.bridge.sock.connect(self.endpoint)
        await until(lambda: not self.bridge.blocked, "the router link to drain")

    def close(self) -> None:
        for conn in list(self.broker.connections):
            conn.connection_lost(None)
        if self.bridge._flush_handle is not None:  # the retry of a blocked send: the socket goes now
            self.bridge._flush_handle.cancel()
        self.bridge.close()
        if self.router is not None:
            self.router.close(0)


async def connected(rig: Rig, cid: str, version: int = 5) -> tuple[Connection, FakeTransport]:
    conn, t = rig.open(version)
    conn.data_received(wire.connect(cid, version))
    await until(lambda: rig.bridge.blocked, "the router link to block")
    rig.grant(cid)
    assert wire.decode_all(t.take(), version) == [Connack(False, 0, {0x21: 100, 0x27: 16777216, 0x22: 10})
                                                  if version == 5 else Connack(False, 0)]
    return conn, t


def run(coro):
    return asyncio.run(coro)


def test_a_granted_connect_stays_paused_while_the_router_link_is_blocked():
    async def go():
        rig = Rig()
        try:
            conn, t = await connected(rig, "c1")
            assert not t.reading  # the CONNACK went out, the link is still full
            await rig.drain_link()
            assert t.reading
        finally:
            rig.close()

    run(go())


def test_a_subscribe_answered_while_the_link_is_blocked_stays_paused():
    async def go():
        rig = Rig(max_subscribes_waiting=1)  # (one SUBSCRIBE waiting is the bound: reading pauses)
        try:
            conn, t = await connected(rig, "c1", 4)
            await rig.drain_link()
            assert t.reading
            rig.bridge.sock.disconnect(rig.endpoint)  # the router goes away again
            rig.router.close(0)
            rig.router = None
            conn.data_received(wire.subscribe(1, [("t/#", 1)]))  # SUBSCRIBE waits for SYNCED
            assert not t.reading
            await until(lambda: rig.bridge.blocked, "the router link to block again")
            rig.synced()
            assert wire.decode_all(t.take(), 4) == [SubAck(1, [1])]
            assert not t.reading  # SUBACK sent, but the link still cannot take more
            await rig.drain_link()
            assert t.reading
        finally:
            rig.close()

    run(go())


def test_a_client_over_its_publish_rate_stays_paused_while_the_link_is_blocked():
    async def go():
        rig = Rig(max_publish_rate=1)
        try:
            conn, t = await connected(rig, "c1", 4)
            # two QoS 0 publishes in one read: the second is over the rate, reading pauses
            conn.data_received(wire.publish("a", b"1") + wire.publish("a", b"2"))
            assert not t.reading
            rig.clock.advance(2.0)  # the bucket has a token again
            assert not t.reading  # but the router link is still blocked
            await rig.drain_link()
            assert t.reading
        finally:
            rig.close()

    run(go())


def test_the_link_draining_does_not_resume_a_client_paused_for_its_own_reason():
    async def go():
        rig = Rig(max_publish_rate=1)
        try:
            conn, t = await connected(rig, "c1", 4)
            conn.data_received(wire.publish("a", b"1") + wire.publish("a", b"2") + wire.publish("a", b"3"))
            await rig.drain_link()
            assert not t.reading  # still over its rate: the third publish waits
            rig.clock.advance(2.0)
            assert t.reading
        finally:
            rig.close()

    run(go())


def test_packets_read_before_a_pause_are_handled_when_it_ends():
    """What was read in the same chunk as the CONNECT waits for the grant, then is handled in order."""
    async def go():
        rig = Rig()
        try:
            conn, t = rig.open(4)
            conn.data_received(wire.connect("c1", 4) + wire.publish("x", b"1", 1, 7) + wire.PINGREQ)
            await until(lambda: rig.bridge.blocked, "the router link to block")
            assert t.take() == b""
            rig.grant("c1")
            assert wire.decode_all(t.take(), 4) == [Connack(False, 0), PubAck(7), PingResp()]
        finally:
            rig.close()

    run(go())

