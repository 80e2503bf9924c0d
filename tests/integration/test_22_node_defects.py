"""Node defects found from outside (issue 8), each checked the way it was found.

1. circusd killed with SIGKILL takes every process of its node with it, and a
   node restarted on the same port and data directory serves alone.
2. A message acknowledged before a SUBSCRIBE arrived is never delivered to that
   subscription; the retained messages of a new subscription come before any
   live message that follows them.
3. The default packet limit accepts multi-megabyte payloads.
"""
from __future__ import annotations

import os
import signal

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt import PubAck, Publish, ReasonCode, SubAck, Subscribe, Subscription
from tests.integration.test_20_multiworker import connect_on, others
from tests.support.clients import publish_all
from tests.support.node import Node, _zombie, wait_for


ACKED = ([ReasonCode.SUCCESS], [ReasonCode.NO_MATCHING_SUBSCRIBERS])


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:port (one per worker that binds it)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def test_circusd_sigkill_ends_every_process_and_a_restart_serves_alone(clients):
    n = Node(workers=2)
    n.start()
    try:
        children = n.children()
        assert len(children) == 3, children  # router + 2 workers
        os.kill(n.proc.pid, signal.SIGKILL)  # the supervisor alone, as an OOM killer would
        n.proc.wait(5)
        wait_for(lambda: all(_gone(p) for p in children), 10, what="every process of the node gone")
        wait_for(lambda: _listeners(n.port) == 0, 10, what=f"nothing listening on {n.port}")
        # the same port and stores: a new node opens them (not locked) and is the only listener
        again = Node(workers=2, port=n.port, data_dir=n.data_dir)
        again.start()
        try:
            assert _listeners(n.port) == 2
            c = clients.connect(n.port, "d22-after-restart", 5)
            assert c.barrier() == []
        finally:
            again.stop()
    finally:
        n.stop()


def clear(pub, sub, topic: str) -> None:
    """Remove the retained message; the subscriber sees the (empty) publish go by."""
    assert publish_all(pub, topic, [b""], 0, retain=True) == []
    p = sub.expect(Publish)
    assert (p.topic, p.payload) == (topic, b""), p


@pytest.fixture(scope="module")
def four():
    n = Node(workers=4)
    n.start()
    yield n
    n.stop()


def test_publish_acknowledged_before_subscribe_is_not_delivered_to_it(four, clients):
    n = four
    pub = connect_on(clients, n, "d22-pub", 5)
    sub = connect_on(clients, n, "d22-sub", 5, others(n, pub))
    for i in range(25):
        topic = f"d22/race/{i}"
        assert publish_all(pub, topic, [b"retained"], 1, retain=True) in ACKED
        assert publish_all(pub, topic, [b"before"], 1, first_pid=2) in ACKED
        # both acknowledged: only now does the other worker's client subscribe
        sub.send(Subscribe(i + 1, [Subscription(topic, 1)]))
        ack = sub.expect(SubAck)
        assert ack.reason_codes == [1]
        p = sub.expect(Publish)
        assert (p.payload, p.retain) == (b"retained", True), p
        sub.send(PubAck(p.packet_id))
        assert sub.barrier() == [], f"round {i}: a message acknowledged before the SUBSCRIBE came"
        clear(pub, sub, topic)


def test_retained_messages_come_before_live_messages_of_a_new_subscription(four, clients):
    n = four
    pub = connect_on(clients, n, "d22-pub2", 5)
    sub = connect_on(clients, n, "d22-sub2", 5, others(n, pub))
    for i in range(25):
        topic = f"d22/order/{i}"
        assert publish_all(pub, topic, [b"retained"], 1, retain=True) in ACKED
        # the live publish races the SUBSCRIBE: it may or may not reach the
        # subscription, but never before the retained message
        sub.send(Subscribe(i + 1, [Subscription(topic, 1)]))
        pub.send(Publish(topic, b"live", 1, packet_id=7))
        assert pub.expect(PubAck).packet_id == 7
        got = [sub.expect(SubAck)]
        got += sub.barrier()
        pubs = [p for p in got if isinstance(p, Publish)]
        for p in pubs:
            if p.qos == 1:
                sub.send(PubAck(p.packet_id))
        assert pubs and (pubs[0].payload, pubs[0].retain) == (b"retained", True), pubs
        assert [p.payload for p in pubs[1:]] in ([], [b"live"]), pubs
        clear(pub, sub, topic)


@pytest.mark.parametrize("size", [1024 * 1024, 8 * 1024 * 1024])
def test_default_packet_limit_takes_multi_megabyte_payloads(four, size):
    """paho, QoS 1, publisher and subscriber on the node's defaults."""
    payload = os.urandom(size)
    got = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"d22-big-sub-{size}", protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.append(m.payload)
    subacked = []
    sub.on_subscribe = lambda *a: subacked.append(a)
    sub.connect("127.0.0.1", four.port)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"d22-big-pub-{size}", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", four.port)
    pub.loop_start()
    try:
        sub.subscribe("d22/firmware", qos=1)
        wait_for(lambda: subacked, 10, what="SUBACK")
        info = pub.publish("d22/firmware", payload, qos=1)
        info.wait_for_publish(30)
        assert info.is_published()
        wait_for(lambda: got, 30, what=f"{size}-byte payload delivered")
        assert got[0] == payload
        assert pub.is_connected()
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()
