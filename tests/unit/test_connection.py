"""Connection (worker/protocol.py) and the handlers, driven as uvicorn drives its
protocols: a real single-worker Broker on a fake clock, each client a real
Connection on a fake transport, fed bytes written out by tests/support/wire.py;
the test reads back what the broker wrote and moves time itself.
"""
from __future__ import annotations

from common.settings import Settings
from mqtt.packets import (
    Connack,
    Disconnect,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    UnsubAck,
)
from tests.support import wire
from tests.support.fakes import FakeClock, FakeTransport
from worker.broker import Broker
from worker.flow import Pause
from worker.protocol import LINGER, Connection
from worker.state import State

V5_CONNACK_PROPS = {0x21: 100, 0x27: 16_777_216, 0x22: 10}  # Receive Maximum, Maximum Packet Size, Topic Alias Maximum


class Node:
    """One worker alone (LocalBridge): everything a CONNECT asks is answered at once."""

    def __init__(self, **settings) -> None:
        settings.setdefault("persistence", False)
        settings.setdefault("workers", 1)
        self.clock = FakeClock()
        self.broker = Broker(Settings(**settings), self.clock)

    def open(self) -> "Client":
        return Client(self)

    def connect(self, cid: str, version: int = 4, **kw) -> "Client":
        c = Client(self, version)
        c.feed(wire.connect(cid, version, **kw))
        ack = c.read()
        assert len(ack) == 1 and isinstance(ack[0], Connack) and ack[0].reason_code == 0, ack
        return c

    def advance(self, dt: float) -> None:
        """Time passes; the worker's once-a-second tick runs (keepalive wheel, timers)."""
        self.clock.advance(dt)
        self.broker.tick()


class Client:
    def __init__(self, node: Node, version: int = 4) -> None:
        self.version = version
        self.t = FakeTransport()
        self.conn = Connection(node.broker)
        self.conn.connection_made(self.t)

    def feed(self, data: bytes) -> None:
        self.conn.data_received(data)

    def read(self) -> list:
        return wire.decode_all(self.t.take(), self.version)

    def ask(self, data: bytes) -> list:
        self.feed(data)
        return self.read()


# -- CONNECT / CONNACK -----------------------------------------------------------
def test_connect_311_and_5():
    n = Node()
    c4 = n.open()
    assert c4.ask(wire.connect("a", 4)) == [Connack(False, 0)]
    c5 = Client(n, 5)
    assert c5.ask(wire.connect("b", 5, keepalive=30)) == [Connack(False, 0, V5_CONNACK_PROPS)]
    assert c4.conn.state == c5.conn.state == State.CONNECTED
    assert not c4.t.closed and c4.t.reading


def test_v5_empty_client_id_is_assigned_and_server_keepalive_capped():
    n = Node(max_keepalive=20)
    c = Client(n, 5)
    (ack,) = c.ask(wire.connect("", 5, keepalive=0))
    assigned = ack.properties[0x12]
    assert assigned and c.conn.client_id == assigned
    assert ack.properties[0x13] == 20  # Server Keep Alive


def test_311_empty_client_id_without_clean_session_is_refused():
    n = Node()
    c = n.open()
    assert c.ask(wire.connect("", 4, clean=False)) == [Connack(False, 2)]  # identifier rejected
    assert c.t.closed or c.t.eof


def test_unsupported_protocol_level_gets_the_answer_of_its_level():
    n = Node()
    c = n.open()
    data = bytearray(wire.connect("x", 4))
    data[8] = 6  # protocol level 6
    assert c.ask(bytes(data)) == [Connack(False, 1)]  # 3.1.1: unacceptable protocol version
    assert c.conn.closed


def test_first_packet_not_connect_closes_without_an_answer():
    n = Node()
    c = n.open()
    assert c.ask(wire.PINGREQ) == []
    assert c.conn.closed and (c.t.closed or c.t.eof)


def test_second_connect_is_a_protocol_error():
    n = Node()
    c = n.connect("a", 5)
    assert c.ask(wire.connect("a", 5)) == [Disconnect(0x82, {0x1F: "second CONNECT"})]
    assert c.conn.closed


def test_connect_timeout_by_moving_the_clock():
    n = Node(connect_timeout=10)
    c = n.open()
    n.clock.advance(9.9)
    assert not c.conn.closed
    n.clock.advance(0.2)
    assert c.conn.closed


def test_linger_closes_the_socket_after_the_client_had_time_to_stop():
    n = Node()
    c = n.open()
    c.feed(wire.connect("", 4, clean=False))  # refused: CONNACK, then the socket half-closes
    assert c.t.eof and not c.t.closed and c.t.reading  # what the client still sends is read and dropped
    c.feed(wire.PINGREQ)
    assert c.read() == [Connack(False, 2)]
    n.clock.advance(LINGER)
    assert c.t.closed


# -- keepalive -------------------------------------------------------------------
def test_keepalive_expires_at_one_and_a_half_times_it():
    n = Node()
    c = n.connect("k", 5, keepalive=10)
    n.advance(14.0)
    assert not c.conn.closed
    n.advance(1.5)
    assert c.conn.closed
    assert c.read() == [Disconnect(0x8D)]  # Keep Alive timeout


def test_traffic_moves_the_keepalive_deadline():
    n = Node()
    c = n.connect("k", 4, keepalive=10)
    for _ in range(5):
        n.advance(10.0)
        assert c.ask(wire.PINGREQ) == [PingResp()]
    n.advance(14.0)
    assert not c.conn.closed
    n.advance(2.0)
    assert c.conn.closed
    assert len(n.broker.keepalive) == 0  # the wheel let go of it


def test_keepalive_zero_never_expires():
    n = Node()
    c = n.connect("k", 4, keepalive=0)
    n.advance(100_000.0)
    assert not c.conn.closed


# -- QoS flows ----------------------------------------------------------------------
def test_qos1_flow_both_ways():
    n = Node()
    sub = n.connect("sub", 4)
    assert sub.ask(wire.subscribe(1, [("t/#", 1)])) == [SubAck(1, [1])]
    pub = n.connect("pub", 4)
    assert pub.ask(wire.publish("t/1", b"m", 1, 5)) == [PubAck(5)]
    (p,) = sub.read()
    assert (p.topic, p.payload, p.qos) == ("t/1", b"m", 1)
    assert p.packet_id in n.broker.sessions["sub"].inflight
    assert sub.ask(wire.puback(p.packet_id)) == []
    assert not n.broker.sessions["sub"].inflight


def test_qos2_flow_both_ways():
    n = Node()
    sub = n.connect("sub", 5)
    assert sub.ask(wire.subscribe(1, [("t", 2)], 5)) == [SubAck(1, [2])]
    pub = n.connect("pub", 5)
    assert pub.ask(wire.publish("t", b"m", 2, 9, version=5)) == [PubRec(9)]
    assert pub.ask(wire.publish("t", b"m", 2, 9, dup=True, version=5)) == [PubRec(9)]  # a resend: owned already
    (p,) = sub.read()  # delivered once
    assert p.qos == 2
    assert pub.ask(wire.pubrel(9, version=5)) == [PubComp(9)]
    assert pub.ask(wire.pubrel(9, version=5)) == [PubComp(9, 0x92)]  # Packet Identifier not found
    assert sub.ask(wire.pubrec(p.packet_id, version=5)) == [PubRel(p.packet_id)]
    assert sub.ask(wire.pubcomp(p.packet_id, version=5)) == []
    assert not n.broker.sessions["sub"].inflight


def test_window_fills_and_moves_up_on_acks():
    n = Node()
    sub = Client(n, 5)
    sub.feed(wire.connect("sub", 5, props={0x21: 2}))  # Receive Maximum 2
    sub.read()
    sub.ask(wire.subscribe(1, [("t", 1)], 5))
    pub = n.connect("pub", 4)
    pub.feed(b"".join(wire.publish("t", b"%d" % i, 1, i + 1) for i in range(3)))
    first = sub.read()
    assert [p.payload for p in first] == [b"0", b"1"]  # the third waits behind the window
    assert sub.ask(wire.puback(first[0].packet_id, version=5))[0].payload == b"2"


def test_receive_maximum_exceeded():
    n = Node(receive_maximum=1)
    c = n.connect("q", 5)
    assert c.ask(wire.publish("t", b"", 2, 1, version=5)) == [PubRec(1, 0x10)]  # no matching subscribers
    assert c.ask(wire.publish("t", b"", 2, 2, version=5)) == [
        Disconnect(0x93, {0x1F: "receive maximum exceeded"})]


def test_unsubscribe_answers():
    n = Node()
    c = n.connect("u", 5)
    c.ask(wire.subscribe(1, [("a", 0)], 5))
    assert c.ask(wire.unsubscribe(2, ["a", "b"], 5)) == [UnsubAck(2, [0x00, 0x11])]


# -- malformed input ------------------------------------------------------------------
def test_wildcard_in_a_topic_name():
    n = Node()
    c5 = n.connect("w5", 5)
    assert c5.ask(wire.publish("a/+", b"", 0, version=5)) == [Disconnect(0x82, {0x1F: "wildcard in topic name"})]
    c4 = n.connect("w4", 4)
    assert c4.ask(wire.publish("a/#", b"", 0)) == []
    assert c4.conn.closed and n.broker.metrics.protocol_errors == 2


def test_malformed_remaining_length_closes():
    n = Node()
    c = n.connect("m", 5)
    assert c.ask(b"\x30\xff\xff\xff\xff\x01") == [Disconnect(0x81, {0x1F: "remaining length longer than 4 bytes"})]
    assert c.conn.closed


def test_bad_fixed_header_flags_close():
    n = Node()
    c = n.connect("m", 5)
    (d,) = c.ask(b"\x82\x00")  # SUBSCRIBE without an identifier
    assert isinstance(d, Disconnect) and d.reason_code == 0x81
    c4 = n.connect("m4", 4)
    assert c4.ask(bytes.fromhex("6002 0001")) == []  # PUBREL with flags 0000
    assert c4.conn.closed


def test_bad_input_leaves_the_others_alone():
    n = Node()
    good = n.connect("good", 4)
    bad = n.connect("bad", 4)
    bad.feed(b"\xf0\x01\x00garbage")
    assert bad.conn.closed
    assert good.ask(wire.PINGREQ) == [PingResp()]


# -- flow control ---------------------------------------------------------------------
def test_publish_rate_pauses_reading_and_the_clock_resumes_it():
    n = Node(max_publish_rate=2)
    sub = n.connect("s", 4)
    sub.ask(wire.subscribe(1, [("r", 0)]))
    pub = n.connect("p", 4)
    pub.feed(b"".join(wire.publish("r", b"%d" % i) for i in range(5)))
    assert not pub.t.reading and pub.conn.flow.reasons == {Pause.RATE}
    got = [p.payload for p in sub.read()]
    assert got == [b"0", b"1", b"2"]  # the third spends the bucket into debt, the rest waits
    n.clock.advance(0.4)
    assert sub.read() == [] and not pub.t.reading
    n.clock.advance(0.1)  # out of debt: the fourth is handled, and spends into debt again
    assert [p.payload for p in sub.read()] == [b"3"] and not pub.t.reading
    n.clock.advance(0.5)
    assert [p.payload for p in sub.read()] == [b"4"] and not pub.t.reading
    n.clock.advance(0.5)
    assert pub.t.reading and not pub.conn.flow.reasons


def test_packets_after_connect_wait_for_the_grant_in_order():
    n = Node()
    c = n.open()
    c.feed(wire.connect("o", 4) + wire.subscribe(1, [("x", 0)]) + wire.publish("x", b"1") + wire.PINGREQ)
    got = c.read()
    assert got[0] == Connack(False, 0) and got[1] == SubAck(1, [0])
    assert got[2] == Publish("x", b"1") and got[3] == PingResp()
    assert c.t.reading


def test_write_pressure_drops_qos0_but_keeps_reading():
    n = Node()
    sub = n.connect("s", 4)
    sub.ask(wire.subscribe(1, [("z", 1)]))
    sub.conn.pause_writing()  # the transport's buffer is past its high water mark
    pub = n.connect("p", 4)
    pub.feed(wire.publish("z", b"q0") + wire.publish("z", b"q1", 1, 1))
    assert [p.payload for p in sub.read()] == [b"q1"]
    assert n.broker.metrics.dropped_qos0 == 1
    assert sub.t.reading  # its PUBACKs must still be read
