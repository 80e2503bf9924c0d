"""Offline sessions: QoS 1/2 messages for a disconnected persistent session are
queued, bounded, and delivered in order on reconnect."""
import os
import re

import pytest

from mqtt import (
    Connack,
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
)
from tests.support.clients import persistent, publish, subscribe
from tests.support.node import Node, wait_for

QUEUE_LIMIT = 5


@pytest.fixture(scope="module")
def small_queue():
    """A node whose sessions queue at most QUEUE_LIMIT messages."""
    n = Node(workers=1, max_queued_messages=QUEUE_LIMIT, sys_interval=1)
    n.start()
    yield n
    n.stop()


def leave(c):
    """DISCONNECT and wait until the broker has closed the connection: from then on
    messages for the session are queued (none can slip onto the old connection)."""
    c.send(Disconnect())
    assert c.expect_closed() == []


def go_offline(clients, port, cid, version, topic, qos=2):
    """A persistent session subscribed to `topic`, then disconnected."""
    c = clients.connect(port, cid, version, **persistent(version))
    subscribe(c, topic, qos)
    leave(c)


def reconnect(clients, port, cid, version, present=True):
    c = clients.open(port, version)
    ack = c.connect(cid, **persistent(version))
    assert isinstance(ack, Connack) and ack.reason_code == 0
    assert ack.session_present is present
    return c


def receive_all(c):
    """Publishes that arrived before a PINGREQ round trip, acknowledged in full."""
    got = c.barrier()
    assert all(isinstance(p, Publish) for p in got), got
    for p in got:
        if p.qos == 1:
            c.send(PubAck(p.packet_id))
        elif p.qos == 2:
            c.send(PubRec(p.packet_id))
            assert c.expect(PubRel).packet_id == p.packet_id
            c.send(PubComp(p.packet_id))
    return got


def sys_value(c, topic):
    p = c.expect(Publish)
    assert p.topic == topic
    return int(p.payload)


def test_queued_while_offline_and_delivered_in_order(node, version, clients):
    cid = f"s05-queue-{version}"
    topic = f"s05/queue/{version}"
    go_offline(clients, node.port, cid, version, topic, qos=2)
    pub = clients.connect(node.port, f"s05-queue-pub-{version}", version)
    sent = []
    for i in range(12):
        qos = (1, 2, 0)[i % 3]
        publish(pub, topic, b"m%02d" % i, qos, i + 1)
        sent.append((b"m%02d" % i, qos))
    c = reconnect(clients, node.port, cid, version)
    got = receive_all(c)
    # QoS 1 and 2 wait for the session, each at its own QoS; QoS 0 is not queued for
    # offline sessions (as in mosquitto without queue_qos0_messages)
    assert [(p.payload, p.qos) for p in got] == [(m, q) for m, q in sent if q > 0]
    assert not any(p.dup for p in got)
    assert len({p.packet_id for p in got}) == len(got)
    # delivered and acknowledged: nothing is left for the next connection
    c.close()
    again = reconnect(clients, node.port, cid, version)
    assert receive_all(again) == []
    # and the session still holds its subscription
    publish(pub, topic, b"after", 1, 99)
    assert [p.payload for p in receive_all(again)] == [b"after"]


def test_queue_follows_unacknowledged_inflight_messages(node, version, clients):
    """A message sent but not acknowledged comes again (DUP) before the queued ones."""
    cid = f"s05-inflight-{version}"
    topic = f"s05/inflight/{version}"
    c = clients.connect(node.port, cid, version, **persistent(version))
    subscribe(c, topic, 1)
    pub = clients.connect(node.port, f"s05-inflight-pub-{version}", version)
    publish(pub, topic, b"first", 1, 1)
    (first,) = c.barrier()
    assert (first.payload, first.dup) == (b"first", False)
    leave(c)
    for i in range(2, 5):
        publish(pub, topic, b"m%d" % i, 1, i)
    again = reconnect(clients, node.port, cid, version)
    got = receive_all(again)
    assert [(p.payload, p.dup) for p in got] == [(b"first", True), (b"m2", False), (b"m3", False), (b"m4", False)]
    assert got[0].packet_id == first.packet_id


def test_nothing_queued_for_a_clean_session(node, version, clients):
    cid = f"s05-clean-{version}"
    topic = f"s05/clean/{version}"
    c = clients.connect(node.port, cid, version)  # clean session / session expiry 0
    subscribe(c, topic, 1)
    leave(c)
    pub = clients.connect(node.port, f"s05-clean-pub-{version}", version)
    publish(pub, topic, b"lost", 1, 1)
    again = reconnect(clients, node.port, cid, version, present=False)
    assert receive_all(again) == []


def test_clean_start_discards_the_queue(node, version, clients):
    cid = f"s05-discard-{version}"
    topic = f"s05/discard/{version}"
    go_offline(clients, node.port, cid, version, topic, qos=1)
    pub = clients.connect(node.port, f"s05-discard-pub-{version}", version)
    publish(pub, topic, b"old", 1, 1)
    c = clients.open(node.port, version)
    ack = c.connect(cid, clean_start=True)
    assert (ack.reason_code, ack.session_present) == (0, False)
    assert receive_all(c) == []
    publish(pub, topic, b"unsubscribed now", 1, 2)
    assert receive_all(c) == []


def test_queue_is_bounded(small_queue, version, clients):
    node = small_queue
    cid = f"s05-bounded-{version}"
    topic = f"s05/bounded/{version}"
    watch = clients.connect(node.port, f"s05-bounded-watch-{version}", version)
    subscribe(watch, "$SYS/broker/store/messages/dropped", 0)
    dropped_before = sys_value(watch, "$SYS/broker/store/messages/dropped")
    go_offline(clients, node.port, cid, version, topic, qos=2)
    log_mark = os.path.getsize(node.log_path)
    pub = clients.connect(node.port, f"s05-bounded-pub-{version}", version)
    for i in range(QUEUE_LIMIT + 3):
        publish(pub, topic, b"m%d" % i, (1, 2)[i % 2], i + 1)
    c = reconnect(clients, node.port, cid, version)
    got = receive_all(c)
    assert [p.payload for p in got] == [b"m%d" % i for i in range(QUEUE_LIMIT)]
    assert [p.qos for p in got] == [(1, 2)[i % 2] for i in range(QUEUE_LIMIT)]
    # the drops are counted ($SYS) and logged with the client id
    wait_for(lambda: sys_value(watch, "$SYS/broker/store/messages/dropped") == dropped_before + 3,
             10, 0, "$SYS dropped count")
    line = wait_for(lambda: re.search(rf".*queue full.*client={re.escape(cid)}\b.*", node.log(log_mark)),
                    5, 0.05, "queue-full log line")
    assert "dropped=1" in line.group(0)
    # the queue took new messages again once drained
    publish(pub, topic, b"later", 1, 50)
    assert [p.payload for p in receive_all(c)] == [b"later"]
