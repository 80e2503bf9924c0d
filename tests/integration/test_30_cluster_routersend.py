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
