"""SHOAL_CLUSTER_ROUTER_SENDS (router/sender.py): the router sends its members' publishes to
the other nodes' routers itself and takes their CONFIRMs; the agent is off the data path.
Real nodes under circusd, one external etcd, raw MQTT clients.

What the agent's sender guaranteed holds on the router's: QoS 0/1/2 both ways in order per
publisher, the PUBACK only once the other node owns the message; what a stopped peer router
did not confirm is sent again and taken once (no QoS 2 duplicate); order after a flap; a peer
killed counts as done; push back on a full peer queue; an agent killed changes nothing on the
data path; a node with the setting off and one with it on reach each other."""
from __future__ import annotations

import os
import re
import signal

import pytest

from mqtt import PubAck, PubComp, PubRec, PubRel, Publish
from tests.support.cluster import (Etcd, admin_metrics, cluster_node, crosses_both_ways, publish, receive,
                                   running_cluster, subscribe, wait_nodes)
from tests.support.node import wait_for

NAMES = ["rs1", "rs2"]


@pytest.fixture(scope="module")
def cluster():
    with running_cluster(NAMES, cluster_link="direct", cluster_router_sends="true", cluster_lease_ttl=5) as c:
        yield c


def figure(node, name: str) -> float:
    text = admin_metrics(node)
    m = re.search(rf"^{name}{{[^}}]*}} ([0-9.e+]+)$", text, re.M)
    assert m is not None, f"{name} not in port {node.port}'s /metrics"
    return float(m.group(1))


def linked(cluster) -> None:
    """Every router holds a data link to the other node's router at its current address."""
    for i, n in enumerate(cluster.nodes):
        other = cluster.etcd.get_json(f"nodes/{NAMES[1 - i]}")["data"]
        wait_for(lambda: f"event=\"direct data link to the peer's router\" peer={NAMES[1 - i]} addr={other}" in n.log(),
                 30, 0.05, f"{NAMES[i]}'s router's data link to {other}")


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_crosses_both_ways_by_the_routers(cluster, clients, qos):
    linked(cluster)
    a, b = cluster.nodes
    before = [figure(n, "shoal_router_sender_sent_total") for n in (a, b)]
    agent_before = [figure(n, "shoal_cluster_forwarded_total") for n in (a, b)]
    crosses_both_ways(clients, a, b, qos, "c30rs", "rs")
    for i, n in enumerate((a, b)):
        assert figure(n, "shoal_router_sender_sent_total") >= before[i] + 5  # the router sent them
        assert figure(n, "shoal_cluster_forwarded_total") == agent_before[i]  # the agent did not


def test_a_stopped_router_gets_the_message_again_and_takes_it_once(cluster, clients):
    """rs2's router stopped: rs1's PUBREC waits; rs1's router sends the message again when it
    was not confirmed in time (logged); rs2's router takes it once: one QoS 2 message."""
    a, b = cluster.nodes
    linked(cluster)
    sub = clients.connect(b.port, "rs-again-sub")
    subscribe(sub, "c30rs/again", 2)
    pub = clients.connect(a.port, "rs-again-pub")
    router = b.router_pid()
    mark = a._log_size()
    os.kill(router, signal.SIGSTOP)
    try:
        pub.send(Publish("c30rs/again", b"once", 2, packet_id=7))
        wait_for(lambda: "peer router did not confirm: sending again" in a.log(since=mark), 30, 0.1, "the resend")
        assert pub.barrier() == []  # no PUBREC while rs2's router is stopped
    finally:
        os.kill(router, signal.SIGCONT)
    assert pub.expect(PubRec, timeout=30).packet_id == 7
    pub.send(PubRel(7))
    assert pub.expect(PubComp, timeout=30).packet_id == 7
    assert [p.payload for p in receive(sub, 1)] == [b"once"]
    publish(pub, "c30rs/again", b"after", 2, pid=8)  # a sentinel: the stopped router's copies are handled by now
    assert [p.payload for p in receive(sub, 1)] == [b"after"]
    assert figure(b, "shoal_router_remote_repeats_total") >= 1


def test_an_agent_killed_leaves_the_data_path_alone(cluster, clients):
    """rs1's agent SIGKILLed: rs1's router keeps sending to rs2's router on what it knows; QoS 1
    throughout, each acknowledged, delivered once, in order, before and after the new agent."""
    a, b = cluster.nodes
    linked(cluster)
    sub = clients.connect(b.port, "rs-agent-sub")
    subscribe(sub, "c30rs/agent", 1)
    pub = clients.connect(a.port, "rs-agent-pub")
    old = a.agent_pid()
    os.kill(old, signal.SIGKILL)
    for i in range(10):
        assert publish(pub, "c30rs/agent", b"m%02d" % i, 1, pid=i + 1) == 0
    wait_for(lambda: a.agent_pid() not in (None, old), 60, 0.1, "rs1's new agent")
    wait_nodes(cluster.nodes, set(NAMES))
    for i in range(10, 20):
        assert publish(pub, "c30rs/agent", b"m%02d" % i, 1, pid=i + 1) == 0
    assert [p.payload for p in receive(sub, 20)] == [b"m%02d" % i for i in range(20)]


def test_a_restarted_router_on_a_new_port_gets_what_it_did_not_confirm(cluster, clients):
    a, b = cluster.nodes
    linked(cluster)
    sub = clients.connect(b.port, "rs-restart-sub")
    subscribe(sub, "c30rs/restart", 1)
    pub = clients.connect(a.port, "rs-restart-pub")
    old = cluster.etcd.get_json(f"nodes/{NAMES[1]}")["data"]
    router = b.router_pid()
    os.kill(router, signal.SIGSTOP)
    pub.send(Publish("c30rs/restart", b"again", 1, packet_id=3))
    assert pub.barrier() == []
    os.kill(router, signal.SIGKILL)
    wait_for(lambda: cluster.etcd.get_json(f"nodes/{NAMES[1]}")["data"] != old, 60, 0.1, "rs2's new data address")
    assert pub.expect(PubAck, timeout=30).packet_id == 3
    assert [p.payload for p in receive(sub, 1)] == [b"again"]
    linked(cluster)
    wait_nodes(cluster.nodes, set(NAMES))


def test_full_peer_queue_pushes_back_on_the_router(clients):
    """SHOAL_CLUSTER_MAX_QUEUED=5 and the receiving node's router stopped: the sending router
    stops reading its members once five messages wait for that peer (logged); nothing is
    acknowledged meanwhile, nothing acknowledged is lost, everything flows once it runs again."""
    etcd = Etcd().start()
    common = dict(cluster_link="direct", cluster_router_sends="true", cluster_max_queued=5, cluster_lease_ttl=15)
    a = cluster_node("rpa", etcd.url, **common)
    b = cluster_node("rpb", etcd.url, **common)
    try:
        a.start(60)
        b.start(60)
        wait_nodes([a, b], {"rpa", "rpb"})
        wait_for(lambda: "direct data link to the peer's router\" peer=rpb" in a.log(), 30, 0.05, "rpa's data link")
        sub = clients.connect(b.port, "rpb-sub")
        subscribe(sub, "c30rp/#", 1)
        pub = clients.connect(a.port, "rpa-pub")
        router = b.router_pid()
        os.kill(router, signal.SIGSTOP)
        try:
            for i in range(20):
                pub.send(Publish(f"c30rp/{i}", b"m%02d" % i, 1, packet_id=i + 1))
            wait_for(lambda: "process=router event='peer queue full: not reading from the members' peer=rpb" in a.log(),
                     30, 0.1, "push back")
            assert [p for p in pub.barrier() if isinstance(p, PubAck)] == []
            assert figure(a, "shoal_router_sender_paused") == 1
        finally:
            os.kill(router, signal.SIGCONT)
        acks = set()
        while len(acks) < 20:
            acks.add(pub.expect(PubAck, timeout=30).packet_id)
        assert acks == set(range(1, 21))
        assert sorted(p.payload for p in receive(sub, 20)) == [b"m%02d" % i for i in range(20)]
        wait_for(lambda: "peer queues drained: reading from the members again" in a.log(), 30, 0.1, "reading again")
        assert figure(a, "shoal_router_sender_paused") == 0
    finally:
        a.stop()
        b.stop()
        etcd.stop()


def test_a_peer_killed_counts_as_done_once_its_lease_is_gone(clients):
    """rpk2 SIGKILLed whole (every process): rpk1's router holds the QoS 1 PUBACK of a message
    rpk2 had a subscriber for until rpk2's lease expires; then that peer counts as done, the
    PUBACK comes, the subscriber on rpk1 has the message, and later publishes go on at once."""
    etcd = Etcd().start()
    common = dict(cluster_link="direct", cluster_router_sends="true", cluster_lease_ttl=4)
    a = cluster_node("rpk1", etcd.url, **common)
    b = cluster_node("rpk2", etcd.url, **common)
    try:
        a.start(60)
        b.start(60)
        wait_nodes([a, b], {"rpk1", "rpk2"})
        wait_for(lambda: "direct data link to the peer's router\" peer=rpk2" in a.log(), 30, 0.05, "rpk1's data link")
        sub_b = clients.connect(b.port, "rpk2-sub")
        subscribe(sub_b, "c30rk/x", 1)
        sub_a = clients.connect(a.port, "rpk1-sub")
        subscribe(sub_a, "c30rk/x", 1)
        pub = clients.connect(a.port, "rpk1-pub")
        assert publish(pub, "c30rk/x", b"before", 1, pid=1) == 0
        assert [p.payload for p in receive(sub_b, 1)] == [b"before"]
        b.kill()
        pub.send(Publish("c30rk/x", b"during", 1, packet_id=2))
        assert pub.expect(PubAck, timeout=60).packet_id == 2  # (once rpk2's lease expired)
        # (the router's log line goes through circus to the node's log: it may land after the PUBACK)
        wait_for(lambda: re.search(r"process=router event=.peer node left: the router's queue for it counts as done. "
                                   r"peer=rpk2 entries=1", a.log()), 30, 0.05, "rpk1's router to log rpk2 done")
        assert publish(pub, "c30rk/x", b"after", 1, pid=3) == 0
        assert [p.payload for p in receive(sub_a, 3)] == [b"before", b"during", b"after"]
    finally:
        a.stop()
        try:
            b.stop()
        except Exception:
            pass
        etcd.stop()


def test_a_node_with_it_off_and_one_with_it_on_reach_each_other(clients):
    """A rolling change of the setting: on rmx1 the router sends, on rmx2 the agent does (both
    on `direct`); QoS 1 both ways, each acknowledged and delivered once, each node's figures
    saying who sent."""
    etcd = Etcd().start()
    a = cluster_node("rmx1", etcd.url, cluster_link="direct", cluster_router_sends="true")
    b = cluster_node("rmx2", etcd.url, cluster_link="direct", cluster_router_sends="false")
    try:
        a.start(60)
        b.start(60)
        wait_nodes([a, b], {"rmx1", "rmx2"})
        wait_for(lambda: "process=router event=\"direct data link to the peer's router\" peer=rmx2" in a.log(), 30,
                 0.05, "rmx1's router's data link")
        wait_for(lambda: "process=agent event=\"direct data link to the peer's router\" peer=rmx1" in b.log(), 30,
                 0.05, "rmx2's agent's data link")
        sub_a = clients.connect(a.port, "rmx1-sub")
        subscribe(sub_a, "c30rm/#", 1)
        sub_b = clients.connect(b.port, "rmx2-sub")
        subscribe(sub_b, "c30rm/#", 1)
        pub_a = clients.connect(a.port, "rmx1-pub")
        pub_b = clients.connect(b.port, "rmx2-pub")
        for i in range(5):
            assert publish(pub_a, "c30rm/a", b"a%d" % i, 1, pid=i + 1) == 0
            assert publish(pub_b, "c30rm/b", b"b%d" % i, 1, pid=i + 1) == 0
        for sub in (sub_a, sub_b):
            got = [p.payload for p in receive(sub, 10)]
            assert [x for x in got if x[:1] == b"a"] == [b"a%d" % i for i in range(5)]
            assert [x for x in got if x[:1] == b"b"] == [b"b%d" % i for i in range(5)]
        assert figure(a, "shoal_router_sender_sent_total") >= 5
        # (the agent's figures reach /metrics with its beat: a moment later)
        wait_for(lambda: "shoal_cluster_forwarded_total" in admin_metrics(b)
                 and figure(b, "shoal_cluster_forwarded_total") >= 5, 30, 0.1, "rmx2's agent's figure")
        assert figure(b, "shoal_router_sender_sent_total") == 0  # (rmx2's router sends nothing)
    finally:
        a.stop()
        b.stop()
        etcd.stop()
