"""PUBLISH: QoS 0/1/2 both ways, exactly once, redelivery on resume, the
inflight windows both ways, Maximum Packet Size both ways, message expiry,
topic aliases, forwarded properties and ordering, for 3.1.1 and 5.0."""
import threading

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt import (
    Connack,
    Disconnect,
    Prop,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
)
from tests.support.clients import persistent, subscribe
from tests.support.node import Node, wait_for
from tests.support.wire import encode

LIMITS = dict(receive_maximum=2, max_packet_size=512)


@pytest.fixture(scope="module")
def limited():
    """A node with a small Receive Maximum and Maximum Packet Size of its own."""
    n = Node(workers=1, **LIMITS)
    n.start()
    yield n
    n.stop()


def publish2(pub, topic, payload, pid, properties=None):
    """A QoS 2 publish with its whole handshake (a broker may deliver at PUBLISH or at PUBREL)."""
    pub.send(Publish(topic, payload, 2, packet_id=pid, properties=properties or {}))
    rec = pub.expect(PubRec)
    assert (rec.packet_id, rec.reason_code) == (pid, 0)
    pub.send(PubRel(pid))
    assert pub.expect(PubComp).packet_id == pid


def publishes(c):
    got = c.barrier()
    assert all(isinstance(p, Publish) for p in got), got
    return got


def resume(clients, port, cid, version):
    c = clients.open(port, version)
    ack = c.connect(cid, **persistent(version))
    assert isinstance(ack, Connack) and ack.reason_code == 0
    assert ack.session_present
    return c


# -- QoS flows ------------------------------------------------------------------------
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_qos_flow_both_directions(node, version, clients, qos):
    topic = f"s03/flow/{version}/{qos}"
    sub = clients.connect(node.port, f"s03-flow-sub-{version}-{qos}", version)
    subscribe(sub, topic, 2)
    pub = clients.connect(node.port, f"s03-flow-pub-{version}-{qos}", version)
    # publisher -> broker
    pub.send(Publish(topic, b"payload", qos, packet_id=None if qos == 0 else 0x1234))
    if qos == 1:
        ack = pub.expect(PubAck)
        assert (ack.packet_id, ack.reason_code) == (0x1234, 0)
    elif qos == 2:
        rec = pub.expect(PubRec)
        assert (rec.packet_id, rec.reason_code) == (0x1234, 0)
        pub.send(PubRel(0x1234))
        comp = pub.expect(PubComp)
        assert (comp.packet_id, comp.reason_code) == (0x1234, 0)
    assert pub.barrier() == []
    # broker -> subscriber
    msg = sub.expect(Publish)
    assert (msg.topic, msg.payload, msg.qos, msg.dup, msg.retain) == (topic, b"payload", qos, False, False)
    if qos == 0:
        assert msg.packet_id is None
    elif qos == 1:
        sub.send(PubAck(msg.packet_id))
    else:
        sub.send(PubRec(msg.packet_id))
        rel = sub.expect(PubRel)
        assert rel.packet_id == msg.packet_id
        sub.send(PubComp(msg.packet_id))
    assert sub.barrier() == []


def test_qos2_incoming_exactly_once(node, version, clients):
    topic = f"s03/once/{version}"
    sub = clients.connect(node.port, f"s03-once-sub-{version}", version)
    subscribe(sub, topic, 2)
    pub = clients.connect(node.port, f"s03-once-pub-{version}", version)
    pub.send(Publish(topic, b"once", 2, packet_id=5))
    assert pub.expect(PubRec).packet_id == 5
    # the publisher did not see the PUBREC and sends again, same packet id, twice
    for _ in range(2):
        pub.send(Publish(topic, b"once", 2, dup=True, packet_id=5))
        assert pub.expect(PubRec).packet_id == 5
    pub.send(PubRel(5))
    comp = pub.expect(PubComp)
    assert (comp.packet_id, comp.reason_code) == (5, 0)
    pub.barrier()
    got = publishes(sub)
    assert [p.payload for p in got] == [b"once"]
    # after PUBCOMP the packet id is free: the same id is a new message
    publish2(pub, topic, b"again", 5)
    pub.barrier()
    got += publishes(sub)
    assert [p.payload for p in got] == [b"once", b"again"]
    for p in got:
        sub.send(PubRec(p.packet_id))
        assert sub.expect(PubRel).packet_id == p.packet_id
        sub.send(PubComp(p.packet_id))
    assert sub.barrier() == []


def test_qos2_incoming_exactly_once_across_reconnect(node, version, clients):
    """The packet id state belongs to the session: a resend after a reconnect is not
    delivered again, and the PUBREL sent on the new connection completes it."""
    topic = f"s03/once-resume/{version}"
    cid = f"s03-once-resume-pub-{version}"
    sub = clients.connect(node.port, f"s03-once-resume-sub-{version}", version)
    subscribe(sub, topic, 2)
    pub = clients.connect(node.port, cid, version, **persistent(version))
    pub.send(Publish(topic, b"once", 2, packet_id=9))
    assert pub.expect(PubRec).packet_id == 9
    pub.close()
    pub = resume(clients, node.port, cid, version)
    pub.send(Publish(topic, b"once", 2, dup=True, packet_id=9))
    assert pub.expect(PubRec).packet_id == 9
    pub.send(PubRel(9))
    comp = pub.expect(PubComp)
    assert (comp.packet_id, comp.reason_code) == (9, 0)
    pub.send(PubRel(9))  # a late duplicate PUBREL: the id is gone now
    comp = pub.expect(PubComp)
    assert (comp.packet_id, comp.reason_code) == (9, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if version == 5 else 0)
    pub.barrier()
    got = publishes(sub)
    assert [p.payload for p in got] == [b"once"]


def test_no_matching_subscribers(node, version, clients):
    pub = clients.connect(node.port, f"s03-nomatch-{version}", version)
    pub.send(Publish(f"s03/nomatch/{version}", b"x", 1, packet_id=1))
    ack = pub.expect(PubAck)
    assert ack.reason_code == (ReasonCode.NO_MATCHING_SUBSCRIBERS if version == 5 else 0)
    pub.send(Publish(f"s03/nomatch/{version}", b"x", 2, packet_id=2))
    rec = pub.expect(PubRec)
    assert rec.reason_code == (ReasonCode.NO_MATCHING_SUBSCRIBERS if version == 5 else 0)
    pub.send(PubRel(2))  # 0x10 is a success: the exchange completes
    comp = pub.expect(PubComp)
    assert (comp.packet_id, comp.reason_code) == (2, 0)


def test_pubrel_for_unknown_packet_id(node, version, clients):
    c = clients.connect(node.port, f"s03-pubrel-unknown-{version}", version)
    c.send(PubRel(77))
    comp = c.expect(PubComp)
    assert comp.packet_id == 77
    assert comp.reason_code == (ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if version == 5 else 0)
    assert c.barrier() == []  # the connection stays up


def test_pubrec_for_unknown_packet_id(node, clients):
    c = clients.connect(node.port, "s03-pubrec-unknown", 5)
    c.send(PubRec(78))
    rel = c.expect(PubRel)
    assert (rel.packet_id, rel.reason_code) == (78, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)


# -- redelivery on session resume ---------------------------------------------------------
def test_unacknowledged_messages_redelivered_with_dup_on_resume(node, version, clients):
    cid = f"s03-redeliver-{version}"
    topic = f"s03/redeliver/{version}"
    sub = clients.connect(node.port, cid, version, **persistent(version))
    subscribe(sub, topic, 2)
    pub = clients.connect(node.port, f"s03-redeliver-pub-{version}", version)
    pub.send(Publish(topic, b"one", 1, packet_id=1))
    pub.expect(PubAck)
    pub.send(Publish(topic, b"two", 2, packet_id=2))
    pub.expect(PubRec)
    pub.send(PubRel(2))
    pub.expect(PubComp)
    pub.send(Publish(topic, b"three", 2, packet_id=3))
    pub.expect(PubRec)
    pub.send(PubRel(3))
    pub.expect(PubComp)
    first = publishes(sub)
    assert [(p.payload, p.qos, p.dup) for p in first] == [(b"one", 1, False), (b"two", 2, False), (b"three", 2, False)]
    one, two, three = first
    # "three" gets as far as PUBREC/PUBREL; the others are not acknowledged at all
    sub.send(PubRec(three.packet_id))
    assert sub.expect(PubRel).packet_id == three.packet_id
    sub.close()

    again = resume(clients, node.port, cid, version)
    got = again.barrier()
    pubs = [p for p in got if isinstance(p, Publish)]
    rels = [p for p in got if isinstance(p, PubRel)]
    assert [(p.payload, p.qos, p.dup, p.packet_id) for p in pubs] == [
        (b"one", 1, True, one.packet_id), (b"two", 2, True, two.packet_id)]
    assert [r.packet_id for r in rels] == [three.packet_id]  # PUBREL again, not the PUBLISH
    again.send(PubAck(one.packet_id))
    again.send(PubRec(two.packet_id))
    assert again.expect(PubRel).packet_id == two.packet_id
    again.send(PubComp(two.packet_id))
    again.send(PubComp(three.packet_id))
    assert again.barrier() == []
    again.close()
    # everything acknowledged: a further resume brings nothing
    third = resume(clients, node.port, cid, version)
    assert third.barrier() == []


# -- inflight windows ------------------------------------------------------------------------
def test_outgoing_window_bounded_by_client_receive_maximum(node, clients):
    topic = "s03/rxmax"
    sub = clients.connect(node.port, "s03-rxmax-sub", 5, properties={Prop.RECEIVE_MAXIMUM: 2})
    subscribe(sub, topic, 2)
    pub = clients.connect(node.port, "s03-rxmax-pub", 5)
    for i in range(5):
        pub.send(Publish(topic, b"%d" % i, 1, packet_id=i + 1))
    assert [pub.expect(PubAck).packet_id for _ in range(5)] == [1, 2, 3, 4, 5]
    publish2(pub, topic, b"q2", 10)
    got = publishes(sub)
    assert [p.payload for p in got] == [b"0", b"1"]
    # one acknowledgement opens one slot
    sub.send(PubAck(got[0].packet_id))
    nxt = publishes(sub)
    assert [p.payload for p in nxt] == [b"2"]
    sub.send(PubAck(got[1].packet_id))
    sub.send(PubAck(nxt[0].packet_id))
    got = publishes(sub)
    assert [p.payload for p in got] == [b"3", b"4"]
    sub.send(PubAck(got[0].packet_id))
    (q2,) = publishes(sub)
    assert (q2.payload, q2.qos) == (b"q2", 2)
    # a QoS 2 message holds its slot until PUBCOMP, not just until PUBREC
    sub.send(PubAck(got[1].packet_id))
    publish2(pub, topic, b"a", 11)
    publish2(pub, topic, b"b", 12)
    (a,) = publishes(sub)
    sub.send(PubRec(q2.packet_id))
    sub.send(PubRec(a.packet_id))
    got = sub.barrier()
    assert sorted(type(p).__name__ for p in got) == ["PubRel", "PubRel"]
    sub.send(PubComp(q2.packet_id))
    (b,) = publishes(sub)
    assert b.payload == b"b"


def test_broker_receive_maximum_enforced(limited, clients):
    c = clients.open(limited.port, 5)
    ack = c.connect("s03-brxmax")
    assert ack.properties[Prop.RECEIVE_MAXIMUM] == 2
    c.send(Publish("s03/brxmax", b"1", 2, packet_id=1))
    c.send(Publish("s03/brxmax", b"2", 2, packet_id=2))
    assert [c.expect(PubRec).packet_id for _ in range(2)] == [1, 2]
    # QoS 1 is acknowledged at once and does not count
    for pid in (20, 21, 22):
        c.send(Publish("s03/brxmax", b"q1", 1, packet_id=pid))
        assert c.expect(PubAck).packet_id == pid
    # completing one frees a slot
    c.send(PubRel(1))
    assert c.expect(PubComp).packet_id == 1
    c.send(Publish("s03/brxmax", b"3", 2, packet_id=3))
    assert c.expect(PubRec).packet_id == 3
    # a third unacknowledged one exceeds it
    c.send(Publish("s03/brxmax", b"4", 2, packet_id=4))
    d = c.expect(Disconnect)
    assert d.reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
    assert c.expect_closed() == []


# -- Maximum Packet Size -----------------------------------------------------------------------
def test_packet_larger_than_broker_maximum_closes(limited, version, clients):
    c = clients.open(limited.port, version)
    ack = c.connect(f"s03-toolarge-{version}")
    if version == 5:
        assert ack.properties[Prop.MAXIMUM_PACKET_SIZE] == 512
    fits = Publish("s03/toolarge", b"x" * 400, 1, packet_id=1)
    assert len(encode(fits, version)) <= 512
    c.send(fits)
    assert c.expect(PubAck).packet_id == 1
    big = Publish("s03/toolarge", b"x" * 600, 1, packet_id=2)
    assert len(encode(big, version)) > 512
    c.send(big)
    got = c.expect_closed()
    if version == 5:
        assert len(got) == 1 and isinstance(got[0], Disconnect)
        assert got[0].reason_code == ReasonCode.PACKET_TOO_LARGE
    else:
        assert got == []


def test_message_larger_than_client_maximum_is_not_sent(node, clients):
    topic = "s03/climax"
    # Receive Maximum 1: a dropped QoS 1 message must not hold the only slot
    sub = clients.connect(node.port, "s03-climax-sub", 5,
                          properties={Prop.MAXIMUM_PACKET_SIZE: 100, Prop.RECEIVE_MAXIMUM: 1})
    subscribe(sub, topic, 1)
    pub = clients.connect(node.port, "s03-climax-pub", 5)
    pub.send(Publish(topic, b"B" * 200, 1, packet_id=1))
    pub.send(Publish(topic, b"b" * 200, 0))
    pub.send(Publish(topic, b"small-1", 1, packet_id=2))
    pub.send(Publish(topic, b"small-0", 0))
    pub.barrier()
    got = publishes(sub)
    assert [(p.payload, p.qos) for p in got] == [(b"small-1", 1), (b"small-0", 0)]
    for p in got:
        assert len(encode(p, 5)) <= 100
    # a subscriber without the limit gets the large one
    sub.send(PubAck(got[0].packet_id))
    other = clients.connect(node.port, "s03-climax-other", 5)
    subscribe(other, topic, 1)
    pub.send(Publish(topic, b"B" * 200, 1, packet_id=3))
    assert pub.expect(PubAck).reason_code == 0
    assert [p.payload for p in publishes(other)] == [b"B" * 200]
    assert publishes(sub) == []


# -- message expiry ------------------------------------------------------------------------------
def sys_uptime(c) -> int:
    p = c.expect(Publish)
    assert p.topic == "$SYS/broker/uptime"
    return int(p.payload.split()[0])


def test_message_expiry_interval_forwarded(node, clients):
    sub = clients.connect(node.port, "s03-expiry-online", 5)
    subscribe(sub, "s03/expiry/online", 1)
    v4 = clients.connect(node.port, "s03-expiry-online-v4", 4)
    subscribe(v4, "s03/expiry/online", 1)
    pub = clients.connect(node.port, "s03-expiry-online-pub", 5)
    pub.send(Publish("s03/expiry/online", b"e", 1, packet_id=1, properties={Prop.MESSAGE_EXPIRY_INTERVAL: 60}))
    pub.send(Publish("s03/expiry/online", b"n", 1, packet_id=2))
    pub.barrier()
    e, n = publishes(sub)
    assert 0 < e.properties[Prop.MESSAGE_EXPIRY_INTERVAL] <= 60
    assert Prop.MESSAGE_EXPIRY_INTERVAL not in n.properties
    assert [p.payload for p in publishes(v4)] == [b"e", b"n"]


def test_expired_messages_dropped_while_waiting(node, clients):
    """Messages waiting for offline sessions, behind a full window, or retained:
    the expired ones are dropped, the others go out with the time they waited
    taken off their expiry interval."""
    topic = "s03/expiry/offline"
    short = {Prop.MESSAGE_EXPIRY_INTERVAL: 1}
    long = {Prop.MESSAGE_EXPIRY_INTERVAL: 100}
    for version in (4, 5):
        c = clients.connect(node.port, f"s03-expiry-{version}", version, **persistent(version))
        subscribe(c, topic, 1)
        c.send(Disconnect())  # and wait for the close: from then on its messages are queued
        assert c.expect_closed() == []
    held = clients.connect(node.port, "s03-expiry-held", 5, properties={Prop.RECEIVE_MAXIMUM: 1})
    subscribe(held, "s03/expiry/held", 1)
    pub = clients.connect(node.port, "s03-expiry-pub", 5)
    pub.send(Publish(topic, b"short", 1, packet_id=1, properties=short))
    pub.send(Publish(topic, b"long", 1, packet_id=2, properties=long))
    pub.send(Publish(topic, b"never", 1, packet_id=3))
    pub.send(Publish("s03/expiry/held", b"hold", 1, packet_id=4))
    pub.send(Publish("s03/expiry/held", b"short", 1, packet_id=5, properties=short))
    pub.send(Publish("s03/expiry/held", b"long", 1, packet_id=6, properties=long))
    pub.send(Publish("s03/expiry/retained/short", b"short", 1, retain=True, packet_id=7, properties=short))
    pub.send(Publish("s03/expiry/retained/long", b"long", 1, retain=True, packet_id=8, properties=long))
    assert [pub.expect(PubAck).packet_id for _ in range(8)] == list(range(1, 9))
    (hold,) = publishes(held)  # its window is full: the other two wait behind it
    assert hold.payload == b"hold"
    # let the broker's own clock run on by more than the short interval
    clock = clients.connect(node.port, "s03-expiry-clock", 5)
    subscribe(clock, "$SYS/broker/uptime", 0)
    start = sys_uptime(clock)
    wait_for(lambda: sys_uptime(clock) >= start + 4, 10, 0, "broker clock")
    for version in (4, 5):
        c = resume(clients, node.port, f"s03-expiry-{version}", version)
        got = publishes(c)
        assert [p.payload for p in got] == [b"long", b"never"]
        if version == 5:
            assert 0 < got[0].properties[Prop.MESSAGE_EXPIRY_INTERVAL] < 100
            assert Prop.MESSAGE_EXPIRY_INTERVAL not in got[1].properties
        for p in got:
            c.send(PubAck(p.packet_id))
    held.send(PubAck(hold.packet_id))
    got = publishes(held)
    assert [p.payload for p in got] == [b"long"]
    assert 0 < got[0].properties[Prop.MESSAGE_EXPIRY_INTERVAL] < 100
    for version in (4, 5):
        c = clients.connect(node.port, f"s03-expiry-retained-{version}", version)
        subscribe(c, "s03/expiry/retained/#", 0)
        got = publishes(c)
        assert [(p.topic, p.retain) for p in got] == [("s03/expiry/retained/long", True)]
        if version == 5:
            assert 0 < got[0].properties[Prop.MESSAGE_EXPIRY_INTERVAL] < 100


# -- topic aliases -----------------------------------------------------------------------------------
def test_topic_alias_from_client(node, clients):
    sub = clients.connect(node.port, "s03-alias-sub", 5)
    subscribe(sub, "s03/alias/#", 1)
    pub = clients.open(node.port, 5)
    ack = pub.connect("s03-alias-pub")
    assert ack.properties[Prop.TOPIC_ALIAS_MAXIMUM] == 10
    pub.send(Publish("s03/alias/x", b"1", 0, properties={Prop.TOPIC_ALIAS: 1}))
    pub.send(Publish("", b"2", 1, packet_id=1, properties={Prop.TOPIC_ALIAS: 1}))
    assert pub.expect(PubAck).reason_code == 0
    pub.send(Publish("s03/alias/y", b"3", 0, properties={Prop.TOPIC_ALIAS: 1}))  # re-mapped
    pub.send(Publish("s03/alias/z", b"4", 0, properties={Prop.TOPIC_ALIAS: 10}))
    pub.send(Publish("", b"5", 0, properties={Prop.TOPIC_ALIAS: 1}))
    pub.send(Publish("", b"6", 0, properties={Prop.TOPIC_ALIAS: 10}))
    pub.barrier()
    got = publishes(sub)
    assert [(p.topic, p.payload) for p in got] == [
        ("s03/alias/x", b"1"), ("s03/alias/x", b"2"), ("s03/alias/y", b"3"),
        ("s03/alias/z", b"4"), ("s03/alias/y", b"5"), ("s03/alias/z", b"6")]
    for p in got:
        assert Prop.TOPIC_ALIAS not in p.properties
    # aliases belong to the connection: a new connection starts with none
    pub.close()
    again = clients.connect(node.port, "s03-alias-pub", 5)
    again.send(Publish("", b"7", 0, properties={Prop.TOPIC_ALIAS: 1}))
    assert again.expect(Disconnect).reason_code == ReasonCode.PROTOCOL_ERROR
    again.expect_closed()


@pytest.mark.parametrize("alias, topic, code", [
    (0, "s03/alias/bad", ReasonCode.TOPIC_ALIAS_INVALID),
    (11, "s03/alias/bad", ReasonCode.TOPIC_ALIAS_INVALID),
    (0xFFFF, "", ReasonCode.TOPIC_ALIAS_INVALID),
    (3, "", ReasonCode.PROTOCOL_ERROR),
], ids=["zero", "above-maximum", "max-uint16", "unknown"])
def test_bad_topic_alias_disconnects(node, clients, alias, topic, code):
    c = clients.connect(node.port, f"s03-badalias-{alias}", 5)
    c.send(Publish(topic, b"x", 0, properties={Prop.TOPIC_ALIAS: alias}))
    d = c.expect(Disconnect)
    assert d.reason_code == code
    assert c.expect_closed() == []


def test_empty_topic_without_alias_is_a_protocol_error(node, clients):
    c = clients.connect(node.port, "s03-emptytopic", 5)
    c.send(Publish("", b"x", 0))
    assert c.expect(Disconnect).reason_code == ReasonCode.PROTOCOL_ERROR
    assert c.expect_closed() == []


# -- properties forwarded ---------------------------------------------------------------------------
def test_properties_forwarded_unchanged(node, clients):
    props = {
        Prop.PAYLOAD_FORMAT_INDICATOR: 1,
        Prop.CONTENT_TYPE: "text/plain; charset=utf-8",
        Prop.RESPONSE_TOPIC: "s03/props/reply",
        Prop.CORRELATION_DATA: b"\x00\x01corr\xff",
        Prop.USER_PROPERTY: [("b", "2"), ("a", "1"), ("b", "3"), ("é", "")],
    }
    sub = clients.connect(node.port, "s03-props-sub", 5)
    subscribe(sub, "s03/props/#", 2)
    v4 = clients.connect(node.port, "s03-props-sub-v4", 4)
    subscribe(v4, "s03/props/#", 2)
    pub = clients.connect(node.port, "s03-props-pub", 5)
    pub.send(Publish("s03/props/0", "héllo".encode(), 0, properties=dict(props)))
    pub.send(Publish("s03/props/1", "héllo".encode(), 1, packet_id=1, properties=dict(props)))
    assert pub.expect(PubAck).reason_code == 0
    publish2(pub, "s03/props/2", "héllo".encode(), 2, properties=dict(props))
    got = publishes(sub)
    assert [p.topic for p in got] == ["s03/props/0", "s03/props/1", "s03/props/2"]
    for p in got:
        assert p.properties == props
        assert p.payload == "héllo".encode()
    assert [(p.topic, p.payload) for p in publishes(v4)] == [(p.topic, p.payload) for p in got]


def test_payload_format_indicator_with_invalid_utf8_refused(node, clients):
    sub = clients.connect(node.port, "s03-pfi-sub", 5)
    subscribe(sub, "s03/pfi", 1)
    pub = clients.connect(node.port, "s03-pfi-pub", 5)
    pub.send(Publish("s03/pfi", b"\xff\xfe", 1, packet_id=1, properties={Prop.PAYLOAD_FORMAT_INDICATOR: 1}))
    assert pub.expect(PubAck).reason_code == ReasonCode.PAYLOAD_FORMAT_INVALID
    pub.send(Publish("s03/pfi", b"\xff\xfe", 1, packet_id=2, properties={Prop.PAYLOAD_FORMAT_INDICATOR: 0}))
    assert pub.expect(PubAck).reason_code == 0
    pub.barrier()
    assert [(p.payload, p.properties) for p in publishes(sub)] == [(b"\xff\xfe", {Prop.PAYLOAD_FORMAT_INDICATOR: 0})]


# -- ordering ----------------------------------------------------------------------------------------
def test_order_kept_for_1000_qos1_messages(node, version, clients):
    """A raw publisher pipelines 1000 QoS 1 messages; a paho subscriber sees them in order."""
    topic = f"s03/order/{version}"
    n = 1000
    got: list[bytes] = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(client, userdata, msg):
        got.append(msg.payload)
        if len(got) == n:
            done.set()

    proto = paho.MQTTv5 if version == 5 else paho.MQTTv311
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"s03-order-sub-{version}", protocol=proto)
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda client, *a: client.subscribe(topic, qos=1)
    sub.connect("127.0.0.1", node.port, keepalive=30)
    sub.loop_start()
    try:
        assert subscribed.wait(10), "paho subscriber did not subscribe"
        pub = clients.connect(node.port, f"s03-order-pub-{version}", version)
        data = b"".join(encode(Publish(topic, b"%04d" % i, 1, packet_id=i + 1), version) for i in range(n))
        pub.send_bytes(data)
        acks = [pub.expect(PubAck).packet_id for _ in range(n)]
        assert acks == list(range(1, n + 1))
        assert done.wait(30), f"only {len(got)} of {n} messages arrived"
        assert got == [b"%04d" % i for i in range(n)]
    finally:
        sub.disconnect()
        sub.loop_stop()

