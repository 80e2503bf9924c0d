"""SUBSCRIBE / UNSUBSCRIBE: reason codes, subscription options, identifiers,
overlapping subscriptions and the `$` rule, for 3.1.1 and 5.0."""
import pytest

from mqtt import (
    Disconnect,
    Prop,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    Subscribe,
    Subscription,
    Unsubscribe,
    UnsubAck,
)
from tests.support.clients import subscribe
from tests.support.node import wait_for


def publish2(pub, topic, payload, pid):
    """A QoS 2 publish with its whole handshake (a broker may deliver at PUBLISH or at PUBREL)."""
    pub.send(Publish(topic, payload, 2, packet_id=pid))
    assert pub.expect(PubRec).packet_id == pid
    pub.send(PubRel(pid))
    assert pub.expect(PubComp).packet_id == pid


def publishes(c):
    """Every PUBLISH that reached `c` before a PINGREQ round trip."""
    got = c.barrier()
    assert all(isinstance(p, Publish) for p in got), got
    return got


# -- SUBACK ----------------------------------------------------------------------
def test_suback_grants_requested_qos(node, version, clients):
    c = clients.connect(node.port, f"s02-grant-{version}", version)
    codes = subscribe(c, ("s02/grant/0", 0), ("s02/grant/1", 1), ("s02/grant/2", 2), pid=42)
    assert codes == [0, 1, 2]


def test_suback_invalid_filter(node, version, clients):
    c = clients.connect(node.port, f"s02-bad-{version}", version)
    bad = 0x8F if version == 5 else 0x80
    codes = subscribe(c, ("s02/bad/#/x", 1), ("s02/bad/ok", 1), ("s02/bad+", 0), ("$share/g/", 0), check=False)
    assert codes == [bad, 1, bad, bad]
    # the connection stays up and the valid filter in the same packet works
    pub = clients.connect(node.port, f"s02-bad-pub-{version}", version)
    pub.send(Publish("s02/bad/ok", b"x", 0))
    pub.barrier()
    assert [p.topic for p in publishes(c)] == ["s02/bad/ok"]


def test_shared_subscription_with_no_local_is_a_protocol_error(node, clients):
    c = clients.connect(node.port, "s02-share-nl", 5)
    c.send(Subscribe(1, [Subscription("$share/g/s02/nl", 1, no_local=True)]))
    d = c.expect(Disconnect)
    assert d.reason_code == ReasonCode.PROTOCOL_ERROR
    assert c.expect_closed() == []


# -- UNSUBACK --------------------------------------------------------------------
def test_unsuback_reason_codes(node, version, clients):
    c = clients.connect(node.port, f"s02-unsub-{version}", version)
    subscribe(c, ("s02/unsub/a", 1))
    c.send(Unsubscribe(7, ["s02/unsub/a", "s02/unsub/never"]))
    ack = c.expect(UnsubAck)
    assert ack.packet_id == 7
    if version == 5:
        assert ack.reason_codes == [ReasonCode.SUCCESS, ReasonCode.NO_SUBSCRIPTION_EXISTED]
    else:
        assert ack.reason_codes == []
    # unsubscribed: nothing arrives any more
    pub = clients.connect(node.port, f"s02-unsub-pub-{version}", version)
    pub.send(Publish("s02/unsub/a", b"x", 0))
    pub.barrier()
    assert publishes(c) == []
    # a second unsubscribe of the same filter: nothing existed any more
    c.send(Unsubscribe(8, ["s02/unsub/a"]))
    ack = c.expect(UnsubAck)
    assert ack.packet_id == 8
    if version == 5:
        assert ack.reason_codes == [ReasonCode.NO_SUBSCRIPTION_EXISTED]


# -- QoS and overlapping subscriptions ----------------------------------------------
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_qos_downgraded_to_subscription_maximum(node, version, clients, sub_qos):
    sub = clients.connect(node.port, f"s02-down-{version}-{sub_qos}", version)
    topic = f"s02/down/{version}/{sub_qos}"
    subscribe(sub, (topic, sub_qos))
    pub = clients.connect(node.port, f"s02-down-pub-{version}-{sub_qos}", version)
    pub.send(Publish(topic, b"q1", 1, packet_id=1))
    pub.expect(PubAck)
    pub.send(Publish(topic, b"q0", 0))
    pub.barrier()
    got = publishes(sub)
    assert [(p.payload, p.qos) for p in got] == [(b"q1", min(1, sub_qos)), (b"q0", 0)]
    for p in got:
        assert (p.packet_id is None) == (p.qos == 0)


def test_overlapping_subscriptions_deliver_one_copy_at_max_qos(node, version, clients):
    sub = clients.connect(node.port, f"s02-overlap-{version}", version)
    base = f"s02/overlap/{version}"
    assert subscribe(sub, (f"{base}/#", 0), (f"{base}/+", 1), (f"{base}/x", 0)) == [0, 1, 0]
    pub = clients.connect(node.port, f"s02-overlap-pub-{version}", version)
    publish2(pub, f"{base}/x", b"m", 3)
    got = publishes(sub)
    assert [(p.topic, p.payload, p.qos) for p in got] == [(f"{base}/x", b"m", 1)]
    # a topic only one of them matches gets that one's QoS
    publish2(pub, f"{base}/x/y", b"n", 4)
    assert [(p.payload, p.qos) for p in publishes(sub)] == [(b"n", 0)]


def test_resubscribe_replaces_the_subscription(node, version, clients):
    sub = clients.connect(node.port, f"s02-resub-{version}", version)
    topic = f"s02/resub/{version}"
    subscribe(sub, (topic, 0))
    assert subscribe(sub, (topic, 1), pid=2) == [1]
    pub = clients.connect(node.port, f"s02-resub-pub-{version}", version)
    pub.send(Publish(topic, b"m", 1, packet_id=1))
    pub.expect(PubAck)
    pub.barrier()
    assert [(p.payload, p.qos) for p in publishes(sub)] == [(b"m", 1)]


# -- subscription options (v5) ----------------------------------------------------
def test_no_local(node, clients):
    c = clients.connect(node.port, "s02-nolocal", 5)
    other = clients.connect(node.port, "s02-nolocal-other", 5)
    subscribe(c, Subscription("s02/nolocal/a", 1, no_local=True), Subscription("s02/nolocal/b", 1))
    c.send(Publish("s02/nolocal/a", b"own-a", 0))
    c.send(Publish("s02/nolocal/b", b"own-b", 0))
    other.send(Publish("s02/nolocal/a", b"other-a", 0))
    other.barrier()
    got = publishes(c)
    assert sorted(p.payload for p in got) == [b"other-a", b"own-b"]


def test_no_local_ignored_by_overlapping_plain_subscription(node, clients):
    """One of two matching subscriptions has no local: the other still delivers."""
    c = clients.connect(node.port, "s02-nolocal2", 5)
    subscribe(c, Subscription("s02/nolocal2/#", 1, no_local=True), Subscription("s02/nolocal2/+", 0))
    c.send(Publish("s02/nolocal2/x", b"own", 1, packet_id=9))
    got = c.barrier()
    assert [type(p) for p in got] == [PubAck, Publish] or [type(p) for p in got] == [Publish, PubAck]
    msg = next(p for p in got if isinstance(p, Publish))
    assert (msg.payload, msg.qos) == (b"own", 0)


# -- subscription identifiers (v5) ------------------------------------------------
def test_subscription_identifier_single(node, clients):
    sub = clients.connect(node.port, "s02-subid1", 5)
    subscribe(sub, ("s02/subid1/+", 1), properties={Prop.SUBSCRIPTION_IDENTIFIER: [17]})
    subscribe(sub, ("s02/subid1-noid", 1), pid=2)
    pub = clients.connect(node.port, "s02-subid1-pub", 5)
    pub.send(Publish("s02/subid1/x", b"a", 0))
    pub.send(Publish("s02/subid1-noid", b"b", 0))
    pub.barrier()
    a, b = publishes(sub)
    assert a.properties.get(Prop.SUBSCRIPTION_IDENTIFIER) == [17]
    assert Prop.SUBSCRIPTION_IDENTIFIER not in b.properties


def test_subscription_identifiers_of_overlapping_subscriptions(node, clients):
    sub = clients.connect(node.port, "s02-subid2", 5)
    subscribe(sub, ("s02/subid2/#", 1), properties={Prop.SUBSCRIPTION_IDENTIFIER: [3]})
    subscribe(sub, ("s02/subid2/+/c", 0), pid=2, properties={Prop.SUBSCRIPTION_IDENTIFIER: [268435455]})
    subscribe(sub, ("s02/subid2/b/c", 0), pid=3)  # no identifier
    pub = clients.connect(node.port, "s02-subid2-pub", 5)
    pub.send(Publish("s02/subid2/b/c", b"both", 1, packet_id=1))
    pub.expect(PubAck)
    pub.send(Publish("s02/subid2/b", b"one", 1, packet_id=2))
    pub.expect(PubAck)
    pub.barrier()
    both, one = publishes(sub)
    assert both.payload == b"both" and both.qos == 1
    assert sorted(both.properties[Prop.SUBSCRIPTION_IDENTIFIER]) == [3, 268435455]
    assert one.payload == b"one" and one.properties[Prop.SUBSCRIPTION_IDENTIFIER] == [3]
    sub.send(PubAck(both.packet_id))
    sub.send(PubAck(one.packet_id))
    # re-subscribing with another identifier replaces it
    subscribe(sub, ("s02/subid2/#", 1), pid=4, properties={Prop.SUBSCRIPTION_IDENTIFIER: [4]})
    pub.send(Publish("s02/subid2/z", b"z", 0))
    pub.barrier()
    (z,) = publishes(sub)
    assert z.properties[Prop.SUBSCRIPTION_IDENTIFIER] == [4]


# -- the $ rule ------------------------------------------------------------------
def test_wildcards_do_not_match_dollar_topics(node, version, clients):
    wild = clients.connect(node.port, f"s02-dollar-wild-{version}", version)
    assert subscribe(wild, ("#", 0), ("+/s02dollar/#", 0)) == [0, 0]
    sys_sub = clients.connect(node.port, f"s02-dollar-sys-{version}", version)
    assert subscribe(sys_sub, ("$SYS/broker/uptime", 0)) == [0]
    # the retained $SYS value reaches the explicit subscriber at once...
    first = sys_sub.expect(Publish)
    assert first.topic == "$SYS/broker/uptime"
    # ...and a later, live one (the node publishes $SYS every second)
    wait_for(lambda: any(p.topic == "$SYS/broker/uptime" for p in publishes(sys_sub)), 5, 0.05, "live $SYS")
    # a client may publish to a $ topic too; only a filter starting with $ sees it
    pub = clients.connect(node.port, f"s02-dollar-pub-{version}", version)
    pub.send(Publish("$s02/s02dollar/x", b"d", 0))
    pub.send(Publish("s02/s02dollar/x", b"plain", 0))
    pub.barrier()
    got = publishes(wild)
    assert [p.topic for p in got if p.topic.startswith("$")] == []
    assert ("s02/s02dollar/x", b"plain") in [(p.topic, p.payload) for p in got]
