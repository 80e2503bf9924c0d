"""Shared subscriptions ($share/<group>/<filter>): one member per message,
spread over the members, pending messages moved when a member leaves."""
from mqtt import (
    Prop,
    PubAck,
    Publish,
    Unsubscribe,
    UnsubAck,
)
from tests.support.clients import subscribe
from tests.support.node import wait_for


def publish_many(pub, topic, n, qos=1, start=0):
    payloads = [b"m%03d" % i for i in range(start, start + n)]
    for i, payload in enumerate(payloads):
        pub.send(Publish(topic, payload, qos, packet_id=start + i + 1 if qos else None))
        if qos == 1:
            assert pub.expect(PubAck).packet_id == start + i + 1
    pub.barrier()
    return payloads


def received(c, ack=True):
    got = c.barrier()
    assert all(isinstance(p, Publish) for p in got), got
    if ack:
        for p in got:
            if p.qos == 1:
                c.send(PubAck(p.packet_id))
    return got


def test_each_message_to_exactly_one_member(node, version, clients):
    flt = f"$share/spread/s06/spread/{version}/#"
    members = [clients.connect(node.port, f"s06-spread-{version}-{i}", version) for i in range(3)]
    for m in members:
        subscribe(m, flt, 1)
    pub = clients.connect(node.port, f"s06-spread-pub-{version}", version)
    sent = publish_many(pub, f"s06/spread/{version}/x", 30)
    per_member = [[p.payload for p in received(m)] for m in members]
    everything = sorted(sum(per_member, []))
    assert everything == sent  # each message exactly once over the group
    assert all(per_member), f"some member got nothing: {[len(x) for x in per_member]}"
    for got in per_member:  # each member sees its share in publish order
        assert got == sorted(got)


def test_groups_are_independent_of_each_other_and_of_plain_subscribers(node, version, clients):
    topic = f"s06/groups/{version}"
    g1 = [clients.connect(node.port, f"s06-groups-{version}-g1-{i}", version) for i in range(2)]
    for m in g1:
        subscribe(m, f"$share/one/{topic}", 1)
    g2 = clients.connect(node.port, f"s06-groups-{version}-g2", version)
    subscribe(g2, f"$share/two/{topic}", 1)
    plain = clients.connect(node.port, f"s06-groups-{version}-plain", version)
    subscribe(plain, topic, 1)
    pub = clients.connect(node.port, f"s06-groups-pub-{version}", version)
    sent = publish_many(pub, topic, 10)
    assert sorted(p.payload for m in g1 for p in received(m)) == sent
    assert [p.payload for p in received(g2)] == sent
    assert [p.payload for p in received(plain)] == sent


def test_shared_delivery_at_the_members_qos(node, version, clients):
    topic = f"s06/qos/{version}"
    m = clients.connect(node.port, f"s06-qos-{version}", version)
    subscribe(m, f"$share/q/{topic}", 0)
    pub = clients.connect(node.port, f"s06-qos-pub-{version}", version)
    publish_many(pub, topic, 2, qos=1)
    assert [(p.qos, p.retain) for p in received(m)] == [(0, False), (0, False)]


def test_pending_messages_go_to_another_member_when_one_leaves(node, version, clients):
    topic = f"s06/leave/{version}"
    flt = f"$share/leave/{topic}"
    quitter = clients.connect(node.port, f"s06-leave-{version}-quitter", version)
    stayer = clients.connect(node.port, f"s06-leave-{version}-stayer", version)
    subscribe(quitter, flt, 1)
    subscribe(stayer, flt, 1)
    pub = clients.connect(node.port, f"s06-leave-pub-{version}", version)
    sent = publish_many(pub, topic, 10)
    unacked = [p.payload for p in received(quitter, ack=False)]
    got = [p.payload for p in received(stayer)]
    assert unacked and got and sorted(unacked + got) == sent
    quitter.close()  # leaves without acknowledging its share

    def stayer_has_all():
        got.extend(p.payload for p in received(stayer))
        return sorted(set(got)) == sent

    wait_for(stayer_has_all, 10, 0, "the quitter's messages at the other member")
    assert sorted(got) == sent  # each once at the remaining member
    # and new messages all go to the remaining member
    more = publish_many(pub, topic, 4, start=10)
    assert [p.payload for p in received(stayer)] == more


def test_queued_messages_of_a_persistent_member_move_when_it_disconnects(node, clients):
    """A v5 member with Receive Maximum 1 holds one message in flight and queues the
    rest; when it goes offline (its session kept) both move to the other member."""
    topic = "s06/queued"
    flt = f"$share/queued/{topic}"
    slow = clients.connect(node.port, "s06-queued-slow", 5, clean_start=False,
                           properties={Prop.SESSION_EXPIRY_INTERVAL: 300, Prop.RECEIVE_MAXIMUM: 1})
    fast = clients.connect(node.port, "s06-queued-fast", 5)
    subscribe(slow, flt, 1)
    subscribe(fast, flt, 1)
    pub = clients.connect(node.port, "s06-queued-pub", 5)
    sent = publish_many(pub, topic, 10)
    held = received(slow, ack=False)
    assert len(held) == 1  # its window is one message; the rest of its share is queued
    got = [p.payload for p in received(fast)]
    assert len(got) < 9
    slow.close()

    def fast_has_all():
        got.extend(p.payload for p in received(fast))
        return sorted(set(got)) == sent

    wait_for(fast_has_all, 10, 0, "the slow member's messages at the fast one")
    assert sorted(got) == sent
    # the slow member comes back: nothing of the moved messages is sent to it again
    back = clients.open(node.port, 5)
    ack = back.connect("s06-queued-slow", clean_start=False, properties={Prop.SESSION_EXPIRY_INTERVAL: 300})
    assert ack.session_present
    assert received(back) == []


def test_unsubscribed_member_leaves_the_group(node, version, clients):
    topic = f"s06/unsub/{version}"
    flt = f"$share/unsub/{topic}"
    a = clients.connect(node.port, f"s06-unsub-{version}-a", version)
    b = clients.connect(node.port, f"s06-unsub-{version}-b", version)
    subscribe(a, flt, 1)
    subscribe(b, flt, 1)
    a.send(Unsubscribe(2, [flt]))
    a.expect(UnsubAck)
    pub = clients.connect(node.port, f"s06-unsub-pub-{version}", version)
    sent = publish_many(pub, topic, 6)
    assert received(a) == []
    assert [p.payload for p in received(b)] == sent
