"""$SYS/broker/... topics: version, uptime, clients connected, messages and bytes
in and out, published at SHOAL_SYS_INTERVAL (1 s for the shared `node`), never
matched by a filter that starts with a wildcard; node-wide on a 2-worker node."""
import re
import time
from importlib.metadata import version as package_version

import pytest

from mqtt import PubAck, Publish
from tests.support.clients import subscribe
from tests.support.node import Node

COUNTERS = (
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/publish/messages/received",
    "$SYS/broker/publish/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
)


def live_rounds(c, topics, timeout=15.0):
    """Yield {topic: text}, one dict per $SYS publication round, from the
    publications of the interval (not the retained copies sent on subscribe)."""
    deadline = time.monotonic() + timeout
    current: dict[str, str] = {}
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no $SYS round with {topics} in {timeout}s")
        p = c.recv(timeout=left)
        if not isinstance(p, Publish) or p.retain:
            continue
        assert p.topic in topics, p.topic
        current[p.topic] = p.payload.decode()
        if len(current) == len(topics):
            yield current
            current = {}


def next_round(c, topics, until=lambda r: True, timeout=15.0) -> dict[str, str]:
    """The first live round that satisfies `until`."""
    for r in live_rounds(c, topics, timeout):
        if until(r):
            return r
    raise AssertionError("unreachable")


def reader(clients, node, name, version, *topics):
    c = clients.connect(node.port, name, version)
    subscribe(c, *topics)
    return c


# -- the topics ------------------------------------------------------------------------
def test_version_is_retained(node, version, clients):
    c = clients.connect(node.port, f"s10-version-{version}", version)
    subscribe(c, "$SYS/broker/version")
    got = c.barrier()  # the retained copy follows the SUBACK
    assert [(p.topic, p.retain) for p in got] == [("$SYS/broker/version", True)]
    assert got[0].payload.decode() == f"shoal {package_version('shoal')}"


def test_uptime_rises_at_the_interval(node, version, clients):
    topic = "$SYS/broker/uptime"
    c = reader(clients, node, f"s10-uptime-{version}", version, topic)
    values, stamps = [], []
    for r in live_rounds(c, (topic,)):
        m = re.fullmatch(r"(\d+) seconds", r[topic])
        assert m, r[topic]
        values.append(int(m.group(1)))
        stamps.append(time.monotonic())
        if len(values) == 3:
            break
    assert values[0] < values[1] < values[2]
    # SHOAL_SYS_INTERVAL=1: one publication a second (the default is 10)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(0.5 < g < 5.0 for g in gaps), gaps


def test_clients_connected_follows_connections(node, version, clients):
    topic = "$SYS/broker/clients/connected"
    c = reader(clients, node, f"s10-conn-{version}", version, topic)
    before = int(next_round(c, (topic,))[topic])
    assert before >= 1  # the reader itself
    extra = [clients.connect(node.port, f"s10-conn-{version}-{i}", 4 + i % 2) for i in range(3)]
    next_round(c, (topic,), lambda r: int(r[topic]) == before + 3)
    for e in extra:
        e.close()
    next_round(c, (topic,), lambda r: int(r[topic]) == before)


def test_message_and_byte_counters_rise_after_traffic(node, version, clients):
    c = reader(clients, node, f"s10-count-{version}", version, *COUNTERS)
    base = {k: int(v) for k, v in next_round(c, COUNTERS).items()}
    sub = clients.connect(node.port, f"s10-count-sub-{version}", version)
    subscribe(sub, "s10/traffic", qos=1)
    pub = clients.connect(node.port, f"s10-count-pub-{version}", version)
    n, size = 100, 1000
    for i in range(n):
        pub.send(Publish("s10/traffic", bytes(size), 1, packet_id=i + 1))
    for i in range(n):
        assert pub.expect(PubAck).packet_id == i + 1
    for i in range(n):
        p = sub.expect(Publish)
        sub.send(PubAck(p.packet_id))
    sub.barrier()
    # publish/messages/received counts client PUBLISHes only: the first round that
    # shows ours is the first one published after the traffic
    after = next_round(c, COUNTERS, lambda r: int(r["$SYS/broker/publish/messages/received"])
                       >= base["$SYS/broker/publish/messages/received"] + n)
    delta = {k: int(after[k]) - base[k] for k in COUNTERS}
    assert delta["$SYS/broker/publish/messages/received"] == n
    assert delta["$SYS/broker/publish/messages/sent"] >= n
    assert delta["$SYS/broker/messages/received"] >= 2 * n  # PUBLISH in, PUBACK from the subscriber
    assert delta["$SYS/broker/messages/sent"] >= 2 * n  # PUBACK to the publisher, PUBLISH out
    assert delta["$SYS/broker/bytes/received"] >= n * size
    assert delta["$SYS/broker/bytes/sent"] >= n * size


# -- the $ rule --------------------------------------------------------------------------
def test_wildcard_subscriber_gets_no_sys_topics(node, version, clients):
    """'#' and '+/...' do not match topics that start with '$': neither the retained
    $SYS copies on subscribe nor the publications of the interval."""
    wild = clients.connect(node.port, f"s10-wild-{version}", version)
    subscribe(wild, "#", "+/broker/#", "+/broker/uptime")
    topic = "$SYS/broker/uptime"
    sys_reader = reader(clients, node, f"s10-wild-reader-{version}", version, topic)
    next_round(sys_reader, (topic,))  # $SYS was published after `wild` subscribed
    got = wild.barrier()
    assert [p.topic for p in got if p.topic.startswith("$")] == []


# -- a node with several workers -------------------------------------------------------------
@pytest.fixture(scope="module")
def node2():
    n = Node(workers=2, sys_interval=1)
    n.start()
    yield n
    n.stop()


def test_node_wide_figures_with_two_workers(node2, clients):
    """$SYS/broker/... sums every worker; $SYS/broker/workers/<id>/... is one worker's."""
    node_wide = "$SYS/broker/clients/connected"
    per_worker = ("$SYS/broker/workers/1/clients/connected", "$SYS/broker/workers/2/clients/connected")
    topics = (node_wide, *per_worker)
    c = reader(clients, node2, "s10-two", 5, *topics)
    before = int(next_round(c, topics)[node_wide])
    # several connections, so that both workers hold some (the kernel spreads them)
    extra = [clients.connect(node2.port, f"s10-two-{i}", 4 + i % 2) for i in range(8)]

    def settled(r):
        return int(r[node_wide]) == before + 8 == sum(int(r[t]) for t in per_worker)

    next_round(c, topics, settled)
    for e in extra:
        e.close()
    next_round(c, topics, lambda r: int(r[node_wide]) == before == sum(int(r[t]) for t in per_worker))
