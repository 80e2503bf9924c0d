"""The direct data link (SHOAL_CLUSTER_LINK=direct, cluster/datalink.py, router/peerdata.py):
a node's agent sends its publishes for another node straight to that node's router over
ZeroMQ. Two real nodes under circusd, one external etcd. The guarantees of the agent-to-agent
links hold: QoS 0/1/2 both ways with order per publisher, PUBACK only once the other node owns
the message, what a stopped router did not confirm sent again and taken once (no QoS 2
duplicate), a router restarted on a new port gets what it did not confirm, a full peer queue
pushes back, bad input on the data port never takes the router down.

These are the agent's sender (SHOAL_CLUSTER_ROUTER_SENDS=false); the router's, the default
now, is tests/integration/test_30_cluster_routersend.py."""
from __future__ import annotations

import os
import signal

import msgpack
import pytest
import zmq

from core import peerdata
from mqtt import PubAck, PubComp, PubRec, PubRel, Publish
from tests.support.cluster import (Etcd, cluster_node, crosses_both_ways, publish, pushed_back_then_delivered,
                                   receive, running_cluster, subscribe, wait_nodes)
from tests.support.node import wait_for

NAMES = ["d1", "d2"]


@pytest.fixture(scope="module")
def cluster():
    with running_cluster(NAMES, cluster_link="direct", cluster_router_sends="false", cluster_lease_ttl=5) as c:
        yield c


def data_addr(cluster, i: int) -> str:
    return cluster.etcd.get_json(f"nodes/{NAMES[i]}")["data"]


def linked(cluster) -> None:
    """Every agent holds a data link to the other node's router at its current address."""
    for i, n in enumerate(cluster.nodes):
        other = data_addr(cluster, 1 - i)
        wait_for(lambda: f"event=\"direct data link to the peer's router\" peer={NAMES[1 - i]} addr={other}" in n.log(),
                 30, 0.05, f"{NAMES[i]}'s data link to {other}")


def test_routers_advertise_their_data_address_and_agents_use_it(cluster):
    for i, n in enumerate(cluster.nodes):
        host, _, port = data_addr(cluster, i).rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert f"router takes other nodes' publishes\" addr={host}:{port}" in n.log()
    linked(cluster)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_crosses_both_ways(cluster, clients, qos):
    crosses_both_ways(clients, *cluster.nodes, qos, "c30d", "dl")


def test_a_stopped_router_gets_the_message_again_and_takes_it_once(cluster, clients):
    """d2's router stopped: d1's PUBREC waits; d1's agent sends the message again when d2's
    router has not confirmed it in time (logged), so d2's router finds it twice when it runs
    again, and takes it once: the subscriber gets one QoS 2 message, the publisher its PUBREC."""
    a, b = cluster.nodes
    linked(cluster)
    sub = clients.connect(b.port, "dl-again-sub")
    subscribe(sub, "c30d/again", 2)
    pub = clients.connect(a.port, "dl-again-pub")
    router = b.router_pid()
    mark = a._log_size()
    os.kill(router, signal.SIGSTOP)
    try:
        pub.send(Publish("c30d/again", b"once", 2, packet_id=7))
        wait_for(lambda: "peer router did not confirm: sending again" in a.log(since=mark), 30, 0.1, "the resend")
        assert pub.barrier() == []  # no PUBREC while d2's router is stopped
    finally:
        os.kill(router, signal.SIGCONT)
    assert pub.expect(PubRec, timeout=30).packet_id == 7
    pub.send(PubRel(7))
    assert pub.expect(PubComp, timeout=30).packet_id == 7
    assert [p.payload for p in receive(sub, 1)] == [b"once"]  # (receive: nothing more by a PINGREQ round trip)
    publish(pub, "c30d/again", b"after", 2, pid=8)  # a sentinel: the stopped router's copies are all handled by now
    assert [p.payload for p in receive(sub, 1)] == [b"after"]


def test_a_restarted_router_on_a_new_port_gets_what_it_did_not_confirm(cluster, clients):
    """d2's router stopped with a QoS 1 message on its way, then killed: circus starts a new
    router, which binds a new data port; d2's agent puts it in etcd, d1's agent links there and
    sends the message again: delivered once, PUBACK to the publisher."""
    a, b = cluster.nodes
    linked(cluster)
    sub = clients.connect(b.port, "dl-restart-sub")
    subscribe(sub, "c30d/restart", 1)
    pub = clients.connect(a.port, "dl-restart-pub")
    old = data_addr(cluster, 1)
    router = b.router_pid()
    os.kill(router, signal.SIGSTOP)
    pub.send(Publish("c30d/restart", b"again", 1, packet_id=3))
    assert pub.barrier() == []  # not acknowledged while d2's router is stopped
    os.kill(router, signal.SIGKILL)
    wait_for(lambda: data_addr(cluster, 1) != old, 60, 0.1, "d2's new router's data address in etcd")
    assert pub.expect(PubAck, timeout=30).packet_id == 3
    assert [p.payload for p in receive(sub, 1)] == [b"again"]
    linked(cluster)
    wait_nodes(cluster.nodes, set(NAMES))


def test_an_agent_restart_goes_over_the_link_until_its_record_names_the_data_address(cluster, clients):
    """d2's agent SIGKILLed: d2's router, on d1's data link, takes d1's publishes meanwhile;
    the new agent joins with a record that has no data address yet (its router's WELCOME
    names it moments later), so d1 sends over the Link until the record names it again,
    then links there anew. QoS 1 throughout: every message acknowledged, delivered once,
    in order."""
    a, b = cluster.nodes
    linked(cluster)
    sub = clients.connect(b.port, "dl-agent-sub")
    subscribe(sub, "c30d/agent", 1)
    pub = clients.connect(a.port, "dl-agent-pub")
    mark, old = a._log_size(), b.agent_pid()
    os.kill(old, signal.SIGKILL)
    for i in range(10):  # (the router's data link: the agent is off the path)
        assert publish(pub, "c30d/agent", b"m%02d" % i, 1, pid=i + 1) == 0
    wait_for(lambda: b.agent_pid() not in (None, old), 60, 0.1, "d2's new agent")
    wait_for(lambda: f"event=\"direct data link to the peer's router\" peer=d2 addr={data_addr(cluster, 1)}"
             in a.log(since=mark), 60, 0.1, "d1 linked to d2's router again")
    for i in range(10, 20):
        assert publish(pub, "c30d/agent", b"m%02d" % i, 1, pid=i + 1) == 0
    assert [p.payload for p in receive(sub, 20)] == [b"m%02d" % i for i in range(20)]
    wait_nodes(cluster.nodes, set(NAMES))


def test_bad_input_on_the_data_port_does_not_take_the_router_down(cluster, clients):
    """A dialler that is not ours, one speaking another data wire, bytes that are no msgpack,
    an op that is no publish, a malformed message: each dropped, counted and logged; a message
    longer than SHOAL_CLUSTER_MAX_FRAME closes that connection; the router goes on routing."""
    a, b = cluster.nodes
    mark = a._log_size()
    ctx = zmq.Context.instance()
    addr = data_addr(cluster, 0)
    socks = []
    try:
        for ident, data in ((b"intruder", b"\x91\x91\x11"),
                            (peerdata.PREFIX + b"99/x/y", b"\x90"),
                            (peerdata.identity("x", "y"), b"\xc1\xc1"),
                            (peerdata.identity("x", "y"), msgpack.packb([[1, 2, 3]])),
                            (peerdata.identity("x", "y"), msgpack.packb([[17, ["t", "not bytes", 1, False, None, None, "x"],
                                                                          True, [], 1, None]])),
                            (peerdata.identity("x", "z"), b"\x90" + b"\0" * (65 * 1024 * 1024))):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.IDENTITY, ident)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(f"tcp://{addr}")
            s.send(data)
            socks.append(s)
        wait_for(lambda: a.log(since=mark).count("data link refused") >= 1, 30, 0.1, "the refusal logged")
        wait_for(lambda: "bad data from another node dropped" in a.log(since=mark), 30, 0.1, "the bad data logged")
        log = a.log(since=mark)  # (the first refusal is logged: either dialler may come first)
        assert "not a Shoal data link" in log or "data link wire 99, this node speaks 1" in log
    finally:
        for s in socks:
            s.close(0)
    sub = clients.connect(a.port, "dl-bad-sub")
    subscribe(sub, "c30d/after", 1)
    pub = clients.connect(b.port, "dl-bad-pub")
    publish(pub, "c30d/after", b"still", 1)
    assert [p.payload for p in receive(sub, 1)] == [b"still"]
    assert a.router_pid() is not None


def test_full_peer_queue_pushes_back_on_the_direct_link(clients):
    """SHOAL_CLUSTER_MAX_QUEUED=5 and the receiving node's router stopped: the sending agent
    stops reading from its router once five messages wait for that peer; nothing acknowledged
    is lost, everything flows once the router is back."""
    etcd = Etcd().start()
    common = dict(cluster_link="direct", cluster_router_sends="false", cluster_max_queued=5, cluster_lease_ttl=15)
    a = cluster_node("dpa", etcd.url, **common)
    b = cluster_node("dpb", etcd.url, **common)
    try:
        a.start(60)
        b.start(60)
        wait_nodes([a, b], {"dpa", "dpb"})
        wait_for(lambda: "direct data link to the peer's router\" peer=dpb" in a.log(), 30, 0.05, "dpa's data link")
        pushed_back_then_delivered(clients, a, b, b.router_pid(), "c32d", "dpb")
    finally:
        a.stop()
        b.stop()
        etcd.stop()


@pytest.mark.parametrize("sender", ["agent", "router"])
def test_a_direct_node_and_a_grpc_node_reach_each_other_over_the_link(clients, sender):
    """A node on `direct` next to one on `grpc` (a rolling change of the setting): the grpc
    node's record names no data address, so the direct node sends to it over the Link, and
    the grpc node never uses the direct node's data port; QoS 1 both ways, PUBACK for each.
    With the router sending (SHOAL_CLUSTER_ROUTER_SENDS) it hands mxb's publishes to its agent."""
    etcd = Etcd().start()
    a = cluster_node("mxa", etcd.url, cluster_link="direct", cluster_router_sends=str(sender == "router").lower())
    b = cluster_node("mxb", etcd.url, cluster_link="grpc")
    try:
        a.start(60)
        b.start(60)
        wait_nodes([a, b], {"mxa", "mxb"})
        assert "data" in etcd.get_json("nodes/mxa") and "data" not in etcd.get_json("nodes/mxb")
        sub_a = clients.connect(a.port, "mxa-sub")
        subscribe(sub_a, "c30m/#", 1)
        sub_b = clients.connect(b.port, "mxb-sub")
        subscribe(sub_b, "c30m/#", 1)
        pub_a = clients.connect(a.port, "mxa-pub")
        pub_b = clients.connect(b.port, "mxb-pub")
        assert publish(pub_a, "c30m/a", b"from a", 1) == 0
        assert publish(pub_b, "c30m/b", b"from b", 1) == 0
        for sub in (sub_a, sub_b):
            assert sorted(p.payload for p in receive(sub, 2)) == [b"from a", b"from b"]
        assert "direct data link" not in a.log() + b.log()
    finally:
        a.stop()
        b.stop()
        etcd.stop()
