"""The clock a delivery reads is the time of the read that caused it (issue 8, point 4).

A worker's broker, one connection per client on a fake transport, fed bytes
written out by hand; the clock is a variable the test moves. Between the
publish and the reconnect the clock moves 1.2 s and no tick runs, as when the
event loop sat idle: the Message Expiry Interval delivered must be counted down.
"""
from __future__ import annotations

import asyncio

from common.settings import Settings
from worker.broker import Broker
from worker.protocol import Connection
from tests.support.fakes import FakeTransport
from tests.support.wire import frames as packets

# v5 CONNECT "s", clean start 0, keepalive 60, Session Expiry Interval 300
CONNECT_S = bytes.fromhex("1013 00044d515454 05 00 003c 05 110000012c 000173")
# v5 CONNECT "p", clean start 1, keepalive 60
CONNECT_P = bytes.fromhex("100e 00044d515454 05 02 003c 00 000170")
# v5 SUBSCRIBE id 1, filter "t", QoS 1
SUBSCRIBE_T = bytes.fromhex("8207 0001 00 000174 01")
DISCONNECT = bytes.fromhex("e000")
# v5 PUBLISH QoS 1 "t" id 1, Message Expiry Interval 30, payload "x"
PUBLISH_EXPIRY_30 = bytes.fromhex("320c 000174 0001 05 020000001e 78")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def message_expiry(first: int, body: bytes) -> int | None:
    """Message Expiry Interval of a v5 PUBLISH body (one-byte property length)."""
    tlen = int.from_bytes(body[:2], "big")
    i = 2 + tlen + (2 if first & 0x06 else 0)
    plen = body[i]
    props = body[i + 1:i + 1 + plen]
    j = 0
    while j < len(props):
        ident = props[j]
        if ident == 0x02:
            return int.from_bytes(props[j + 1:j + 5], "big")
        raise AssertionError(f"unexpected property {ident:#x} in {props.hex()}")
    return None


def open_conn(broker: Broker) -> tuple[Connection, Transport]:
    conn, t = Connection(broker), FakeTransport()
    conn.connection_made(t)
    return conn, t


def test_expiry_counted_down_from_the_time_of_the_read_not_of_the_last_tick():
    async def run() -> int | None:
        clock = Clock(1000.0)
        broker = Broker(Settings(persistence=False, workers=1), clock)
        broker.tick()
        s, _ = open_conn(broker)
        s.data_received(CONNECT_S + SUBSCRIBE_T + DISCONNECT)  # DISCONNECT closes it
        p, _ = open_conn(broker)
        p.data_received(CONNECT_P + PUBLISH_EXPIRY_30)
        clock.t += 1.2  # the loop was idle: no tick ran
        again, t = open_conn(broker)
        again.data_received(CONNECT_S)
        pubs = [(f, b) for f, b in packets(t.data) if f >> 4 == 3]
        assert len(pubs) == 1, packets(t.data)
        for c in (p, again):
            c.connection_lost(None)
        return message_expiry(*pubs[0])

    assert asyncio.run(run()) == 29  # ceil(30 - 1.2)
