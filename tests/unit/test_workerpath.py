"""Issue 10's worker path (workerpath): the PUBACK/PUBREC a cross-worker QoS 1/2 publish waits for
is written by its AckGate (no closure, no packet object per publish), and the properties of a
message from the router are read by a table instead of an Enum call. A real Broker and real
Connections fed MQTT bytes, the RouterBridge on a fake DEALER (tests/support/worker_rig.py)."""
from __future__ import annotations

import pytest

from core import ops as o
from core.records import msg_from_wire, msg_to_wire, props_from_wire
from core.message import Message
from mqtt import Prop, PubAck, PubRec, ReasonCode, encode
from tests.support import worker_rig as rig

CONNECT_P4 = bytes.fromhex("100d 00044d515454 04 02 003c 0001 70")  # 3.1.1, client "p", clean session
CONNECT_P5 = bytes.fromhex("100e 00044d515454 05 02 003c 00 0001 70")  # v5, client "p", clean start


def publish(v5: bool, qos: int, pid: int) -> bytes:
    """PUBLISH "t" payload "x" with packet id pid."""
    body = bytes.fromhex("0001 74") + pid.to_bytes(2, "big") + (b"\x00" if v5 else b"") + b"x"
    return bytes((0x30 | qos << 1, len(body))) + body


def publisher(w: rig.Worker, connect: bytes):
    w.router(o.Routes(1, [[1, "w2", "t", None]]))  # another worker wants "t"
    p, t = w.connection(connect)
    (claim,) = w.claims()
    w.router(o.Grant("p", claim.req, None))
    t.data.clear()
    w.ops()
    return p, t


@pytest.mark.parametrize("v5", [False, True])
@pytest.mark.parametrize("qos", [1, 2])
def test_the_ack_is_written_once_the_router_confirms(v5, qos):
    def body():
        w = rig.Worker()
        p, t = publisher(w, CONNECT_P5 if v5 else CONNECT_P4)
        p.data_received(publish(v5, qos, 0x0102))
        (pub,) = w.ops(o.Pub)
        assert bytes(t.data) == b""  # nothing before the other worker owns it
        w.router(o.Confirm(pub.token, True))
        want = encode((PubAck if qos == 1 else PubRec)(0x0102, 0), 5 if v5 else 4)
        assert bytes(t.data) == want == bytes((0x40 if qos == 1 else 0x50, 2, 1, 2))
        assert w.bridge.unconfirmed == {} and w.bridge.confirms == {}
        p.connection_lost(None)
    rig.run(body)


@pytest.mark.parametrize("qos", [1, 2])
def test_a_failed_confirm_answers_quota_exceeded_in_v5_and_nothing_in_3_1_1(qos):
    def body():
        for v5 in (True, False):
            w = rig.Worker()
            p, t = publisher(w, CONNECT_P5 if v5 else CONNECT_P4)
            p.data_received(publish(v5, qos, 7))
            (pub,) = w.ops(o.Pub)
            w.router(o.Confirm(pub.token, False))
            if v5:
                assert bytes(t.data) == bytes((0x40 if qos == 1 else 0x50, 3, 0, 7, ReasonCode.QUOTA_EXCEEDED))
            else:
                assert bytes(t.data) == b""  # the client sends it again
            if qos == 2:  # not owned: a resend is a new message, not a duplicate
                assert 7 not in p.session.incoming_qos2
            p.connection_lost(None)
    rig.run(body)


def test_a_second_qos2_publish_with_the_same_id_is_answered_at_once():
    def body():
        w = rig.Worker()
        p, t = publisher(w, CONNECT_P5)
        p.data_received(publish(True, 2, 9))
        (pub,) = w.ops(o.Pub)
        w.router(o.Confirm(pub.token, True))
        assert bytes(t.data) == bytes.fromhex("50020009")
        t.data.clear()
        p.data_received(publish(True, 2, 9))  # (a resend before the PUBREL)
        assert bytes(t.data) == bytes.fromhex("50020009")
        assert w.ops(o.Pub) == []
        p.connection_lost(None)
    rig.run(body)


def test_properties_from_the_wire_are_the_enum_members_and_an_unknown_one_is_refused():
    props = {Prop.CONTENT_TYPE: "a/b", Prop.USER_PROPERTY: [("k", "v"), ("k", "w")],
             Prop.PAYLOAD_FORMAT_INDICATOR: 1, Prop.CORRELATION_DATA: b"c", Prop.RESPONSE_TOPIC: "r"}
    m = Message("t", b"x", 1, False, props, None, "p")
    back = msg_from_wire(msg_to_wire(m, 0.0), 0.0)
    assert back.properties == props
    assert all(k.__class__ is Prop for k in back.properties)
    assert back.properties[Prop.USER_PROPERTY] == [("k", "v"), ("k", "w")]
    with pytest.raises(ValueError):
        props_from_wire({250: 1})
    with pytest.raises(ValueError):
        props_from_wire({"3": 1})


def test_a_message_record_of_seven_eight_or_more_fields_is_read_and_a_short_one_refused():
    base = ["t", b"x", 1, True, {int(Prop.CONTENT_TYPE): "a/b"}, 5.0, "p"]
    m7 = msg_from_wire(base, 100.0)
    assert (m7.topic, m7.payload, m7.qos, m7.retain, m7.expires_at, m7.origin, m7.mid) == \
        ("t", b"x", 1, True, 105.0, "p", None)
    assert m7.properties == {Prop.CONTENT_TYPE: "a/b"}
    assert msg_from_wire(base + [42], 100.0).mid == 42
    assert msg_from_wire(base + [43, "a later field"], 100.0).mid == 43  # (fields a newer writer adds)
    assert msg_from_wire(["t", b"x", 0, False, None, None, ""], 0.0).properties == {}
    with pytest.raises(ValueError):
        msg_from_wire(base[:6], 100.0)
