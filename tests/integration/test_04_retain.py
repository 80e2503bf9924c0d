"""Retained messages: stored, replaced, cleared, delivered on subscribe (also
through wildcards, never to shared subscriptions), the retain flag on live
messages and the v5 options retain as published and retain handling."""
import pytest

from mqtt import (
    Prop,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscription,
    Unsubscribe,
    UnsubAck,
)
from tests.support.clients import subscribe


def publishes(c):
    got = c.barrier()
    assert all(isinstance(p, Publish) for p in got), got
    return got


def retain(c, topic, payload, qos=0, pid=1, properties=None):
    """Publish a retained message and finish its QoS handshake."""
    c.send(Publish(topic, payload, qos, retain=True, packet_id=pid if qos else None, properties=properties or {}))
    if qos == 1:
        c.expect(PubAck)
    elif qos == 2:
        c.expect(PubRec)
        c.send(PubRel(pid))
        c.expect(PubComp)
    c.barrier()


def test_retained_delivered_on_subscribe_with_retain_flag(node, version, clients):
    topic = f"s04/basic/{version}"
    pub = clients.connect(node.port, f"s04-basic-pub-{version}", version)
    retain(pub, topic, b"kept", qos=1)
    sub = clients.connect(node.port, f"s04-basic-sub-{version}", version)
    subscribe(sub, (topic, 2))
    (msg,) = publishes(sub)
    assert (msg.topic, msg.payload, msg.retain, msg.qos, msg.dup) == (topic, b"kept", True, 1, False)
    sub.send(PubAck(msg.packet_id))
    # every new subscriber gets it, each time
    for i, qos in enumerate((0, 1)):
        late = clients.connect(node.port, f"s04-basic-late{i}-{version}", version)
        subscribe(late, (topic, qos))
        (msg,) = publishes(late)
        assert (msg.payload, msg.retain, msg.qos) == (b"kept", True, qos)
        if qos:
            late.send(PubAck(msg.packet_id))


def test_retained_replaced(node, version, clients):
    topic = f"s04/replace/{version}"
    pub = clients.connect(node.port, f"s04-replace-pub-{version}", version)
    retain(pub, topic, b"v1")
    retain(pub, topic, b"v2", qos=2)
    pub.send(Publish(topic, b"not-retained", 0))  # a plain publish leaves the stored one alone
    pub.barrier()
    sub = clients.connect(node.port, f"s04-replace-sub-{version}", version)
    subscribe(sub, (topic, 2))
    got = publishes(sub)
    assert [(p.payload, p.retain, p.qos) for p in got] == [(b"v2", True, 2)]


def test_retained_cleared_by_empty_payload(node, version, clients):
    topic = f"s04/clear/{version}"
    pub = clients.connect(node.port, f"s04-clear-pub-{version}", version)
    retain(pub, topic, b"soon gone", qos=1)
    live = clients.connect(node.port, f"s04-clear-live-{version}", version)
    subscribe(live, (topic, 0))
    assert [p.payload for p in publishes(live)] == [b"soon gone"]
    retain(pub, topic, b"", qos=1)
    # the empty retained message itself still reaches current subscribers
    assert [p.payload for p in publishes(live)] == [b""]
    sub = clients.connect(node.port, f"s04-clear-sub-{version}", version)
    subscribe(sub, (topic, 1), (f"s04/clear/{version}/#", 1))
    assert publishes(sub) == []


def test_retained_delivered_through_wildcards(node, version, clients):
    base = f"s04/wild/{version}"
    pub = clients.connect(node.port, f"s04-wild-pub-{version}", version)
    topics = [f"{base}/a/x", f"{base}/b/x", f"{base}/a/y/z", f"{base}/a", f"{base}-other/a/x"]
    for t in topics:
        retain(pub, t, t.encode())

    def received(*filters):
        sub = clients.connect(node.port, f"s04-wild-sub-{version}-{len(filters)}-{filters[0]}", version)
        subscribe(sub, *[(f, 0) for f in filters])
        got = publishes(sub)
        assert all(p.retain for p in got)
        return sorted(p.topic for p in got)

    assert received(f"{base}/+/x") == [f"{base}/a/x", f"{base}/b/x"]
    assert received(f"{base}/#") == sorted([f"{base}/a/x", f"{base}/b/x", f"{base}/a/y/z", f"{base}/a"])
    assert received(f"{base}/a/#") == sorted([f"{base}/a/x", f"{base}/a/y/z", f"{base}/a"])
    assert received(f"{base}/+/+/z") == [f"{base}/a/y/z"]
    assert received(f"{base}/+") == [f"{base}/a"]
    assert received(f"+/wild/{version}/a/x") == [f"{base}/a/x"]


def test_retained_not_delivered_to_shared_subscriptions(node, version, clients):
    topic = f"s04/shared/{version}"
    pub = clients.connect(node.port, f"s04-shared-pub-{version}", version)
    retain(pub, topic, b"r")
    sub = clients.connect(node.port, f"s04-shared-sub-{version}", version)
    subscribe(sub, (f"$share/g/{topic}", 1))
    other = clients.connect(node.port, f"s04-shared-sub2-{version}", version)
    subscribe(other, ("$share/g2/s04/shared/#", 1))
    assert publishes(sub) == []
    assert publishes(other) == []
    # the subscription works for new messages
    pub.send(Publish(topic, b"live", 0))
    pub.barrier()
    assert [(p.payload, p.retain) for p in publishes(sub)] == [(b"live", False)]
    assert [(p.payload, p.retain) for p in publishes(other)] == [(b"live", False)]


def test_live_retained_message_to_existing_subscriber(node, version, clients):
    """3.1.1 and v5 without retain as published: the retain flag is cleared."""
    topic = f"s04/live/{version}"
    sub = clients.connect(node.port, f"s04-live-sub-{version}", version)
    subscribe(sub, (topic, 1))
    pub = clients.connect(node.port, f"s04-live-pub-{version}", version)
    retain(pub, topic, b"live", qos=1)
    (msg,) = publishes(sub)
    assert (msg.payload, msg.retain, msg.qos) == (b"live", False, 1)


def test_retain_as_published(node, clients):
    topic = "s04/rap"
    rap = clients.connect(node.port, "s04-rap-on", 5)
    subscribe(rap, Subscription(topic, 1, retain_as_published=True))
    plain = clients.connect(node.port, "s04-rap-off", 5)
    subscribe(plain, Subscription(topic, 1, retain_as_published=False))
    pub = clients.connect(node.port, "s04-rap-pub", 5)
    retain(pub, topic, b"r", qos=1)
    pub.send(Publish(topic, b"n", 0))
    pub.barrier()
    assert [(p.payload, p.retain) for p in publishes(rap)] == [(b"r", True), (b"n", False)]
    assert [(p.payload, p.retain) for p in publishes(plain)] == [(b"r", False), (b"n", False)]


def test_retain_handling(node, clients):
    topic = "s04/rh"
    pub = clients.connect(node.port, "s04-rh-pub", 5)
    retain(pub, topic, b"r")
    for rh, first, again in [(0, [b"r"], [b"r"]), (1, [b"r"], []), (2, [], [])]:
        c = clients.connect(node.port, f"s04-rh-{rh}", 5)
        subscribe(c, Subscription(topic, 0, retain_handling=rh))
        got = publishes(c)
        assert [p.payload for p in got] == first, f"retain handling {rh}, new subscription"
        assert all(p.retain for p in got)
        subscribe(c, Subscription(topic, 0, retain_handling=rh), pid=2)  # the same filter again
        assert [p.payload for p in publishes(c)] == again, f"retain handling {rh}, existing subscription"
        # live messages flow regardless of retain handling
        pub.send(Publish(topic, b"live", 0))
        pub.barrier()
        assert [p.payload for p in publishes(c)] == [b"live"]
        c.close()


def test_retain_handling_1_after_unsubscribe_is_new_again(node, clients):
    topic = "s04/rh1"
    pub = clients.connect(node.port, "s04-rh1-pub", 5)
    retain(pub, topic, b"r")
    c = clients.connect(node.port, "s04-rh1", 5)
    subscribe(c, Subscription(topic, 0, retain_handling=1))
    assert [p.payload for p in publishes(c)] == [b"r"]
    c.send(Unsubscribe(2, [topic]))
    c.expect(UnsubAck)
    subscribe(c, Subscription(topic, 0, retain_handling=1), pid=3)
    assert [p.payload for p in publishes(c)] == [b"r"]


def test_retained_keeps_properties(node, clients):
    topic = "s04/props"
    props = {Prop.CONTENT_TYPE: "application/json", Prop.USER_PROPERTY: [("k", "v")],
             Prop.RESPONSE_TOPIC: "s04/props/reply", Prop.CORRELATION_DATA: b"\x01"}
    pub = clients.connect(node.port, "s04-props-pub", 5)
    retain(pub, topic, b"{}", qos=1, properties=props)
    sub = clients.connect(node.port, "s04-props-sub", 5)
    subscribe(sub, (topic, 0), properties={Prop.SUBSCRIPTION_IDENTIFIER: [9]})
    (msg,) = publishes(sub)
    assert msg.retain
    assert msg.properties == {**props, Prop.SUBSCRIPTION_IDENTIFIER: [9]}


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_retained_qos_is_the_lower_of_message_and_subscription(node, version, clients, qos):
    topic = f"s04/qos/{version}/{qos}"
    pub = clients.connect(node.port, f"s04-qos-pub-{version}-{qos}", version)
    retain(pub, topic, b"q", qos=qos, pid=4)
    for sub_qos in (0, 1, 2):
        sub = clients.connect(node.port, f"s04-qos-sub-{version}-{qos}-{sub_qos}", version)
        subscribe(sub, (topic, sub_qos))
        (msg,) = publishes(sub)
        assert (msg.retain, msg.qos) == (True, min(qos, sub_qos))
        sub.close()


def test_retained_on_subscribe_respect_receive_maximum(node, clients):
    base = "s04/rxmax"
    pub = clients.connect(node.port, "s04-rxmax-pub", 5)
    for i in range(3):
        retain(pub, f"{base}/{i}", b"%d" % i, qos=1, pid=i + 1)
    sub = clients.connect(node.port, "s04-rxmax-sub", 5, properties={Prop.RECEIVE_MAXIMUM: 1})
    subscribe(sub, (f"{base}/+", 1))
    seen = []
    for _ in range(3):
        (msg,) = publishes(sub)  # one at a time: the next only after the acknowledgement
        assert msg.retain and msg.qos == 1
        seen.append(msg.payload)
        sub.send(PubAck(msg.packet_id))
    assert sorted(seen) == [b"0", b"1", b"2"]
    assert publishes(sub) == []
