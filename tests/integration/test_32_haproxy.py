"""One broker behind HAProxy (issue 10 point 8): three nodes, one etcd, and HAProxy in
TCP mode balancing round robin over the three MQTT ports (tests/support/haproxy.py).

Every client connects through HAProxy, as devices behind a load balancer do, so
each connection lands on the next node; each test checks (from HAProxy's own
counts) that its clients sit on different nodes, and that a client reconnecting
lands elsewhere. What a client can observe must be what one broker gives:
retained messages, sessions that follow their client, wills, shared
subscriptions, no local, subscription identifiers, QoS 2 exactly once, and a
publish that races a subscription made on another node.

The clients are paho-mqtt's. tests/interop/paho_cluster.py runs the Eclipse Paho
interoperability suites through the same set-up.
"""
from __future__ import annotations

import os
import queue
import signal
import threading
import time
import uuid
from types import SimpleNamespace

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.support.cluster import running_cluster, wait_nodes
from tests.support.haproxy import HAProxy
from tests.support.node import wait_for

NAMES = ["p1", "p2", "p3"]
WAIT = 30.0  # seconds: every step has a deadline this generous (a shared machine)


@pytest.fixture(scope="module")
def cluster():
    # issue 11's behaviour (sessions follow their client); a lease long enough for the
    # test that freezes an agent for a moment
    with running_cluster(NAMES, cluster_lease_ttl=10, cluster_lease_loss="disconnect") as c:
        proxy = HAProxy({name: n.port for name, n in zip(NAMES, c.nodes)}).start()
        try:
            yield SimpleNamespace(etcd=c.etcd, nodes=c.nodes, by_name=dict(zip(NAMES, c.nodes)), proxy=proxy)
        finally:
            proxy.stop()


@pytest.fixture
def lb(cluster):
    """Factory of paho clients connected through HAProxy, disconnected after the test."""
    made: list[Client] = []

    def factory(version: int, cid: str | None = None, **kw) -> Client:
        c = Client(cluster.proxy, version, cid or f"t32-{uuid.uuid4().hex[:10]}", **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


class Client:
    """A paho client through HAProxy; .node is the node HAProxy gave its last connection."""

    def __init__(self, proxy: HAProxy, version: int, cid: str, will: tuple | None = None):
        self.proxy = proxy
        self.version = version
        self.cid = cid
        self.will = will
        self.messages: queue.Queue = queue.Queue()
        self.acks: dict[int, threading.Event] = {}
        self.subacks: dict[int, list] = {}
        self.connected = threading.Event()
        self.session_present = None
        self.node = None
        self.c = None

    def _new(self, clean: bool):
        proto = paho.MQTTv5 if self.version == 5 else paho.MQTTv311
        kw = {} if self.version == 5 else {"clean_session": clean}
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.cid, protocol=proto, **kw)
        c.max_inflight_messages_set(100)
        c.on_connect = self._on_connect
        c.on_message = lambda _c, _u, m: self.messages.put(m)
        c.on_subscribe = self._on_subscribe
        c.on_publish = lambda _c, _u, mid, *a: self.acks.setdefault(mid, threading.Event()).set()
        if self.will:
            topic, payload, qos = self.will
            c.will_set(topic, payload, qos)
        return c

    def _on_connect(self, _c, _u, flags, reason, _props=None):
        self.session_present = bool(flags.session_present)
        self.reason = reason
        self.connected.set()

    def _on_subscribe(self, _c, _u, mid, reasons, _props=None):
        self.subacks[mid] = [int(getattr(r, "value", r)) for r in reasons]

    def connect(self, clean: bool = True, expiry: int | None = None) -> "Client":
        self.c = self._new(clean)
        self.connected.clear()
        before = self.proxy.sessions()
        kw = {}
        if self.version == 5:
            kw["clean_start"] = clean
            if expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = expiry
                kw["properties"] = props
        self.c.connect("127.0.0.1", self.proxy.port, keepalive=60, **kw)
        self.c.loop_start()
        assert self.connected.wait(WAIT), f"{self.cid}: no CONNACK"
        assert not self.reason.is_failure, f"{self.cid}: CONNACK {self.reason}"
        landed = self.proxy.landed(before)
        assert len(landed) == 1, landed
        self.node = landed[0]
        return self

    def subscribe(self, flt: str, qos: int, wait: bool = True, sub_id: int | None = None, no_local: bool = False):
        if self.version == 5:
            props = None
            if sub_id is not None:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = sub_id
            _, mid = self.c.subscribe((flt, SubscribeOptions(qos=qos, noLocal=no_local)), properties=props)
        else:
            _, mid = self.c.subscribe(flt, qos)
        if wait:
            wait_for(lambda: mid in self.subacks, WAIT, 0.01, f"SUBACK of {flt}")
            assert self.subacks[mid] == [qos], self.subacks[mid]
        return mid

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False, wait: bool = True) -> None:
        info = self.c.publish(topic, payload, qos, retain=retain)
        if wait:
            if qos == 0:
                info.wait_for_publish(WAIT)
            else:
                assert self.acks.setdefault(info.mid, threading.Event()).wait(WAIT), f"no ack for {topic}"

    def receive(self, count: int, timeout: float = WAIT) -> list:
        out = []
        for _ in range(count):
            try:
                out.append(self.messages.get(timeout=timeout))
            except queue.Empty:
                raise AssertionError(f"{self.cid} got {len(out)} of {count}: {[(m.topic, m.payload) for m in out]}")
        return out

    def nothing_before(self, sentinel_topic: str) -> list:
        """The messages that came before the one on sentinel_topic (which must come)."""
        before = []
        while True:
            m = self.messages.get(timeout=WAIT)
            if m.topic == sentinel_topic:
                return before
            before.append(m)

    def disconnect(self) -> None:
        if self.c is not None:
            self.c.disconnect()
            self.c.loop_stop()

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT (the will fires)."""
        self.c.loop_stop()
        self.c.socket().close()

    def close(self) -> None:
        if self.c is not None:
            try:
                self.c.disconnect()
            except Exception:
                pass
            self.c.loop_stop()


def apart(*clients: Client) -> None:
    """The clients sit on distinct nodes (as many as there are nodes)."""
    nodes = [c.node for c in clients]
    assert len(set(nodes)) == min(len(nodes), len(NAMES)), nodes


# -- the set-up ----------------------------------------------------------------------------
def test_round_robin_and_cluster_nodes(lb):
    """Three connections land on three nodes, and each node names all three in
    $SYS/broker/cluster/nodes."""
    import json

    cs = [lb(5).connect() for _ in range(3)]
    apart(*cs)
    for c in cs:
        c.subscribe("$SYS/broker/cluster/nodes", 0)
        (m,) = c.receive(1)
        assert sorted(json.loads(m.payload)) == NAMES, (c.node, m.payload)


# -- retained ---------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [4, 5])
def test_retained_set_replace_clear(lb, version):
    topic = f"t32/retained/{version}/{uuid.uuid4().hex[:6]}"
    sentinel = topic + "/sentinel"
    a = lb(version).connect()
    a.publish(sentinel, b"s", 1, retain=True)
    a.publish(topic, b"first", 1, retain=True)
    b = lb(version).connect()
    apart(a, b)
    b.subscribe(topic, 1)
    (m,) = b.receive(1)
    assert (m.payload, m.retain) == (b"first", True)
    b.publish(topic, b"second", 1, retain=True)  # replaced from another node
    c = lb(version).connect()
    apart(a, b, c)
    c.subscribe(topic, 1)
    (m,) = c.receive(1)
    assert (m.payload, m.retain) == (b"second", True)
    c.publish(topic, b"", 1, retain=True)  # cleared from the third
    d = lb(version).connect()  # back on a's node
    assert d.node == a.node
    d.subscribe(topic, 1)
    d.subscribe(sentinel, 1)
    assert d.nothing_before(sentinel) == []
    a.publish(sentinel, b"", 1, retain=True)


# -- sessions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [4, 5])
def test_session_present_and_queued_on_another_node(lb, cluster, version):
    """A persistent session made on one node, its queued QoS 1 and 2 messages
    published on another, resumed on a third: session present, both delivered."""
    topic = f"t32/session/{version}/{uuid.uuid4().hex[:6]}"
    # (3.1.1: clean session 0 from the start; 5.0: clean start with an expiry)
    s = lb(version, f"t32-session-{version}-{uuid.uuid4().hex[:6]}").connect(clean=version == 5, expiry=300)
    s.subscribe(topic, 2)
    first = s.node
    s.disconnect()
    s.connect(clean=False, expiry=300)  # lands on the next node: takes the session over
    assert s.node != first
    assert s.session_present is True
    second = s.node
    s.disconnect()
    pub = lb(version).connect()
    assert pub.node not in (first, second) or len(NAMES) < 3, (first, second, pub.node)
    pub.publish(topic, b"queued-1", 1)
    pub.publish(topic, b"queued-2", 2)
    s.connect(clean=False, expiry=300)
    assert s.node != second
    assert s.session_present is True
    got = s.receive(2)
    assert [(m.payload, m.qos) for m in got] == [(b"queued-1", 1), (b"queued-2", 2)]
    # the session is live and subscribed where it is now: a CONNACK of a session taken
    # over from another node waits, as a SUBACK does, until every node has its routes, so
    # a publish made at once on another node reaches it (once in about six runs it was
    # lost before)
    pub.publish(topic, b"live", 2)
    (m,) = s.receive(1)
    assert m.payload == b"live"
    s.disconnect()
    s.connect(clean=True)  # clean start ends the session cluster-wide
    assert s.session_present is False


@pytest.mark.parametrize("version", [4, 5])
def test_will_on_abrupt_close(lb, version):
    topic = f"t32/will/{version}/{uuid.uuid4().hex[:6]}"
    watcher = lb(version).connect()
    watcher.subscribe(topic, 1)
    w = lb(version, will=(topic, b"gone", 1)).connect()
    apart(watcher, w)
    w.drop()
    (m,) = watcher.receive(1)
    assert m.payload == b"gone"


# -- routing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [4, 5])
def test_shared_subscription_exactly_once(lb, version):
    topic = f"t32/shared/{version}/{uuid.uuid4().hex[:6]}"
    members = [lb(version).connect() for _ in range(3)]
    apart(*members)
    for c in members:
        c.subscribe(f"$share/g/{topic}", 1)
    pub = lb(version).connect()
    n = 30
    for i in range(n):
        pub.publish(topic, b"%02d" % i, 1)
    got: list[bytes] = []

    def all_in():
        for c in members:
            while not c.messages.empty():
                got.append(c.messages.get().payload)
        return len(got) >= n

    wait_for(all_in, WAIT, 0.02, f"{n} shared messages")
    # a sentinel through every member's node proves nothing more is on its way
    for c in members:
        c.subscribe(topic + "/sentinel", 1)
    pub.publish(topic + "/sentinel", b"s", 1)
    for c in members:
        got += [m.payload for m in c.nothing_before(topic + "/sentinel")]
    assert sorted(got) == [b"%02d" % i for i in range(n)]


def test_shared_subscription_spread_over_nodes(lb):
    """Members on three nodes get an even share (not half to the publisher's node)."""
    topic = f"t32/spread/{uuid.uuid4().hex[:6]}"
    members = [lb(5).connect() for _ in range(3)]
    apart(*members)
    for c in members:
        c.subscribe(f"$share/g/{topic}", 1)
    pub = lb(5).connect()
    n = 60
    for i in range(n):
        pub.publish(topic, b"%02d" % i, 1)
    counts = {}

    def all_in():
        for c in members:
            while not c.messages.empty():
                c.messages.get()
                counts[c.node] = counts.get(c.node, 0) + 1
        return sum(counts.values()) >= n

    wait_for(all_in, WAIT, 0.02, f"{n} shared messages")
    assert sorted(counts) == NAMES and all(abs(v - n // 3) <= 2 for v in counts.values()), counts


def test_no_local(lb):
    topic = f"t32/nolocal/{uuid.uuid4().hex[:6]}"
    a = lb(5).connect()
    b = lb(5).connect()
    apart(a, b)
    a.subscribe(topic, 1, no_local=True)
    b.subscribe(topic, 1, no_local=True)
    a.publish(topic, b"from a", 1)
    (m,) = b.receive(1)
    assert m.payload == b"from a"
    b.publish(topic, b"from b", 1)  # the sentinel: a gets it, and nothing of its own before
    (m,) = a.receive(1)
    assert m.payload == b"from b"
    assert a.messages.empty() and b.messages.empty()


def test_subscription_identifiers(lb):
    topic = f"t32/subid/{uuid.uuid4().hex[:6]}"
    s = lb(5).connect()
    s.subscribe(topic + "/+", 1, sub_id=7)
    s.subscribe(topic + "/#", 2, sub_id=9)
    pub = lb(5).connect()
    apart(s, pub)
    pub.publish(topic + "/x", b"one", 2)
    (m,) = s.receive(1)
    assert sorted(m.properties.SubscriptionIdentifier) == [7, 9]
    assert m.qos == 2
    pub.publish(topic + "/x/y", b"two", 1)  # matches only the second
    (m,) = s.receive(1)
    assert (m.payload, m.properties.SubscriptionIdentifier) == (b"two", [9])


@pytest.mark.parametrize("version", [4, 5])
def test_qos2_exactly_once_in_order(lb, version):
    topic = f"t32/qos2/{version}/{uuid.uuid4().hex[:6]}"
    s = lb(version).connect()
    s.subscribe(topic, 2)
    pub = lb(version).connect()
    apart(s, pub)
    n = 50
    for i in range(n):
        pub.publish(topic, b"%02d" % i, 2, wait=False)
    got = s.receive(n)
    assert [m.payload for m in got] == [b"%02d" % i for i in range(n)]
    assert all(m.qos == 2 for m in got)
    s.subscribe(topic + "/sentinel", 0)
    pub.publish(topic + "/sentinel", b"s", 0)
    assert s.nothing_before(topic + "/sentinel") == []


def test_publish_racing_a_subscribe_on_another_node(lb, cluster):
    """The Paho v5 suite's test_request_response and test_subscribe_options publish
    right after another client sent its SUBSCRIBE, before its SUBACK. With the
    subscriber on another node, that publish must reach it as on one broker: a
    publish read after the SUBSCRIBE was handled is delivered. The publishing
    node's agent is held (SIGSTOP) until the publish is acknowledged, so its route
    certainly arrives after the publish."""
    topic = f"t32/race/{uuid.uuid4().hex[:6]}"
    sub = lb(5).connect()
    pub = lb(5).connect()
    apart(sub, pub)
    agent = cluster.by_name[pub.node].agent_pid()
    assert agent is not None
    os.kill(agent, signal.SIGSTOP)
    try:
        sub.subscribe(topic, 1, wait=False)
        # the subscriber's node handled the SUBSCRIBE: its route is in etcd
        wait_for(lambda: f"routes/{sub.node}/{topic}" in cluster.etcd.keys(f"routes/{sub.node}/"), WAIT, 0.02,
                 "the new route in etcd")
        pub.publish(topic, b"raced", 1)  # acknowledged: nobody on the publisher's node knew the route
    finally:
        os.kill(agent, signal.SIGCONT)
    (m,) = sub.receive(1)
    assert m.payload == b"raced"


# -- etcd compaction --------------------------------------------------------------------------
def _pad_etcd(url: str, prefix: str, count: int, size: int) -> int:
    """count puts (one etcd revision each, 20 at a time) of keys that no agent reads but
    every agent's watch carries (they sort inside its range)."""
    import asyncio

    import aetcd

    from cluster.etcd import parse_endpoint

    async def pad():
        host, port = parse_endpoint(url)
        async with aetcd.Client(host, port, options={"grpc.max_receive_message_length": 64 << 20}) as c:
            value = b"x" * size
            for i in range(0, count, 20):
                await asyncio.gather(*(c.put(f"{prefix}{j:05d}".encode(), value) for j in range(i, min(i + 20, count))))

    asyncio.run(pad())


def test_compaction_while_a_watch_is_behind(lb, cluster):
    """A node's watch falls behind (its agent frozen while etcd takes thousands of
    revisions), a new route and a new retained message are made elsewhere, and etcd
    compacts past what that watch read: the node reads the whole state again, so a
    publish made on it afterwards reaches the new subscriber on another node and a new
    subscriber on it sees the new retained message."""
    topic = f"t32/compact/{uuid.uuid4().hex[:6]}"
    behind = lb(5).connect()
    sub = lb(5).connect()
    setter = lb(5).connect()
    apart(behind, sub, setter)
    node = cluster.by_name[behind.node]
    agent = node.agent_pid()
    mark = len(node.log())
    frozen = time.monotonic()
    os.kill(agent, signal.SIGSTOP)
    try:
        # more revisions than etcd buffers for a watch that is not read (128 responses,
        # plus what the stream's window holds)
        _pad_etcd(cluster.etcd.url, f"padding/{topic}/", 400, 64 * 1024)
        mid = sub.subscribe(topic + "/route", 1, wait=False)  # (its SUBACK waits for the frozen node)
        wait_for(lambda: f"routes/{sub.node}/{topic}/route" in cluster.etcd.keys(f"routes/{sub.node}/"), WAIT, 0.02,
                 "the new route in etcd")
        setter.publish(topic + "/retained", b"new", 1, retain=True, wait=False)
        wait_for(lambda: cluster.etcd.keys(f"retained/{topic}/retained"), WAIT, 0.02, "the retained message in etcd")
        rev = int(json_status(cluster.etcd)["header"]["revision"])
        cluster.etcd.ctl("compaction", str(rev))
    finally:
        os.kill(agent, signal.SIGCONT)
    took = time.monotonic() - frozen
    assert took < 8, f"the agent was frozen {took:.1f} s: its lease (10 s) nearly ran out; the test means nothing"
    wait_for(lambda: "etcd compacted past this node's watch" in node.log(mark), WAIT, 0.05,
             "the frozen node to find its watch compacted")
    # the SUBACK: every node, the one that was behind included, has the route now
    wait_for(lambda: mid in sub.subacks, WAIT, 0.01, "the SUBACK")
    behind.publish(topic + "/route", b"after compaction", 1)
    (m,) = sub.receive(1)
    assert m.payload == b"after compaction"
    behind.subscribe(topic + "/retained", 1)
    (m,) = behind.receive(1)
    assert (m.payload, m.retain) == (b"new", True)
    cluster.etcd.ctl("del", "--prefix", f"padding/{topic}/")
    setter.publish(topic + "/retained", b"", 1, retain=True)


def json_status(etcd) -> dict:
    import json

    return json.loads(etcd.ctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]


# -- issue 10's closing-note gaps ------------------------------------------------------------------
def test_retained_puback_means_every_node_has_it(cluster):
    """A retained publish is acknowledged once it is in etcd and every live node applied
    it: while one node's agent is frozen the PUBACK waits (a PINGREQ barrier answers
    before it), and once the publisher holds it a new subscriber on that node gets the
    message at once."""
    from mqtt import PubAck, Publish
    from tests.support.raw import RawClient

    topic = f"t32/retained-ack/{uuid.uuid4().hex[:6]}"
    before = cluster.proxy.sessions()
    pub = RawClient(cluster.proxy.port, 5, timeout=WAIT)
    pub.connect(f"t32-rack-{uuid.uuid4().hex[:6]}")
    (node,) = cluster.proxy.landed(before)
    other = cluster.by_name[NAMES[(NAMES.index(node) + 1) % len(NAMES)]]
    agent = other.agent_pid()
    os.kill(agent, signal.SIGSTOP)
    try:
        pub.send(Publish(topic, b"durable", 1, retain=True, packet_id=1))
        wait_for(lambda: cluster.etcd.keys(f"retained/{topic}"), WAIT, 0.02, "the retained message in etcd")
        early = pub.barrier()
        assert not any(isinstance(p, PubAck) for p in early), early  # the frozen node has not applied it
    finally:
        os.kill(agent, signal.SIGCONT)
    assert pub.expect(PubAck, WAIT).packet_id == 1
    from tests.support.cluster import subscribe
    from tests.support.raw import connect

    s = connect(other.port, f"t32-rack-sub-{uuid.uuid4().hex[:6]}", 5)
    subscribe(s, topic, 1)
    p = s.recv(WAIT)
    assert isinstance(p, Publish) and (p.payload, p.retain) == (b"durable", True), p
    pub.send(Publish(topic, b"", 1, retain=True, packet_id=2))
    assert pub.expect(PubAck, WAIT).packet_id == 2
    pub.close()
    s.close()


def test_message_expiry_counts_the_wait_for_a_peer(lb, cluster):
    """A message that waits in the publishing node's queue for another node (that
    node's agent killed: the link is down until circus has started a new one) arrives
    with its Message Expiry Interval less the wait."""
    topic = f"t32/expiry/{uuid.uuid4().hex[:6]}"
    expiry = 120
    sub = lb(5).connect()
    sub.subscribe(topic, 1)
    pub = lb(5).connect()
    apart(sub, pub)
    node = cluster.by_name[sub.node]
    os.kill(node.agent_pid(), signal.SIGKILL)
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = expiry
    sent = time.monotonic()
    pub.c.publish(topic, b"waited", 1, properties=props)
    (m,) = sub.receive(1)
    waited = time.monotonic() - sent
    left = m.properties.MessageExpiryInterval
    # whole seconds, rounded up by the broker: at most the interval less the wait, plus one
    assert left <= expiry - waited + 1, (left, waited)
    assert left >= expiry - waited - 2, (left, waited)
    wait_for(lambda: node.agent_pid() is not None and "registered with the router" in node.log(), WAIT, 0.05,
             "the new agent")


def test_retained_clear_holds_when_a_node_comes_back(lb, cluster):
    """A node stops while it holds a retained message; the message is cleared
    elsewhere; the node comes back with its old copy in its store: the clear holds on
    every node (etcd keeps a tombstone of the clear, so the node does not put it back)."""
    topic = f"t32/clear/{uuid.uuid4().hex[:6]}"
    sentinel = topic + "/sentinel"
    setter = lb(5).connect()
    setter.publish(topic, b"old", 1, retain=True)
    gone = cluster.by_name[setter.node]
    setter.close()
    gone.stop()  # SIGTERM: the node leaves with "old" in its store
    others = [n for n in cluster.nodes if n is not gone]
    wait_nodes(others, {n.env["SHOAL_NODE_NAME"] for n in others})
    from tests.support.cluster import publish, subscribe
    from tests.support.raw import connect

    c = connect(others[0].port, f"t32-clear-{uuid.uuid4().hex[:6]}", 5)
    publish(c, topic, b"", 1, retain=True)  # cleared while the node is away
    gone.start(60)
    wait_nodes(cluster.nodes, set(NAMES))
    # a retained publish on the node that came back: acknowledged once every node has it,
    # so whatever that node wrote to etcd before it is in etcd too
    back = connect(gone.port, f"t32-clear-back-{uuid.uuid4().hex[:6]}", 5)
    publish(back, sentinel, b"s", 1, retain=True)
    for n in cluster.nodes:
        s = connect(n.port, f"t32-clear-sub-{uuid.uuid4().hex[:6]}", 5)
        subscribe(s, topic, 1, pid=1)
        subscribe(s, sentinel, 1, pid=2)
        got = s.recv(WAIT)
        assert getattr(got, "topic", None) == sentinel, (n.env["SHOAL_NODE_NAME"], got)
        s.close()
    publish(back, sentinel, b"", 1, retain=True)
    c.close()
    back.close()


def test_retained_too_large_for_etcd_holds_nothing_up(cluster):
    """A retained message larger than etcd takes (this etcd has its default 1.5 MiB
    request limit) stays on its node, said so in the log; the writes after it (a
    retained message, a route) still reach etcd and every node."""
    from tests.support.cluster import publish, subscribe
    from tests.support.raw import connect

    topic = f"t32/big/{uuid.uuid4().hex[:6]}"
    a, b = cluster.nodes[0], cluster.nodes[1]
    mark = len(a.log())
    pub = connect(a.port, f"t32-big-{uuid.uuid4().hex[:6]}", 5)
    publish(pub, topic + "/big", os.urandom(2 * 1024 * 1024), 1, retain=True)
    publish(pub, topic + "/small", b"small", 1, retain=True)
    wait_for(lambda: "retained message too large for etcd" in a.log(mark), WAIT, 0.05, "the agent's error line")
    s = connect(b.port, f"t32-big-sub-{uuid.uuid4().hex[:6]}", 5)
    subscribe(s, topic + "/small", 1)
    p = s.recv(WAIT)
    assert (p.topic, p.payload) == (topic + "/small", b"small"), p
    publish(pub, topic + "/big", b"", 1, retain=True)
    publish(pub, topic + "/small", b"", 1, retain=True)
    pub.close()
    s.close()
