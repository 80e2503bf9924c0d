"""A closed connection is let go at once (found by `make fuzz`, tests/fuzz/live.py).

The keepalive wheel kept every connection it had bucketed until that bucket came
due, 1.5 times the client's keepalive later (up to 27 hours for 65535 s), and with
it the connection's buffers: a client that connects with a long keepalive, sends
part of a large packet and goes away pinned that part (up to SHOAL_MAX_PACKET_SIZE)
for hours. Under the fuzzer the node's RSS grew by tens of MiB a minute and did not
come down after the connections were gone. A worker's broker, connections on a fake
transport, fed bytes written out by hand.
"""
from __future__ import annotations

import asyncio
import gc
import weakref

from common.settings import Settings
from tests.unit.test_clock import Clock, open_conn
from worker.broker import Broker


def connect(client_id: bytes, keepalive: int) -> bytes:
    """3.1.1 CONNECT, clean session."""
    body = b"\x00\x04MQTT\x04\x02" + keepalive.to_bytes(2, "big") + len(client_id).to_bytes(2, "big") + client_id
    return bytes((0x10, len(body))) + body


def partial_publish(size: int, sent: int) -> bytes:
    """The first `sent` bytes of a QoS 0 PUBLISH to "t" with a `size`-byte payload."""
    body_len = 3 + size
    head = bytearray((0x30,))
    n = body_len
    while True:
        b, n = n & 0x7F, n >> 7
        head.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes(head + b"\x00\x01t" + bytes(sent))


def test_a_closed_connection_and_its_partial_packet_are_released_before_its_keepalive_ends():
    async def run():
        clock = Clock(1000.0)
        broker = Broker(Settings(persistence=False, workers=1), clock)
        broker.tick()
        refs = []
        for i in range(20):
            conn, _ = open_conn(broker)
            conn.data_received(connect(b"c%d" % i, 65535) + partial_publish(1 << 20, 512 << 10))
            assert conn.framer.pending > 500_000  # the node holds the part it has
            conn.connection_lost(ConnectionResetError())  # the client went away
            refs.append(weakref.ref(conn))
            del conn
        clock.t += 60
        broker.tick()
        gc.collect()
        alive = sum(1 for r in refs if r() is not None)
        assert alive == 0, f"{alive} of 20 closed connections still referenced (with 512 KiB each)"
        assert len(broker.keepalive) == 0

    asyncio.run(run())


def test_keepalive_still_expires_a_silent_connection_and_spares_a_live_one():
    async def run():
        clock = Clock(1000.0)
        broker = Broker(Settings(persistence=False, workers=1), clock)
        broker.tick()
        silent, t_silent = open_conn(broker)
        silent.data_received(connect(b"silent", 10))
        live, t_live = open_conn(broker)
        live.data_received(connect(b"live", 10))
        gone, _ = open_conn(broker)
        gone.data_received(connect(b"gone", 10))
        gone.connection_lost(None)
        assert len(broker.keepalive) == 2
        for _ in range(4):  # 4 x 4 s: past 1.5 x 10 s for the silent one only
            clock.t += 4
            live.data_received(b"\xc0\x00")  # PINGREQ
            broker.tick()
        assert silent.closed and not live.closed
        assert t_live.data.endswith(b"\xd0\x00")
        assert len(broker.keepalive) == 1
        live.connection_lost(None)

    asyncio.run(run())
