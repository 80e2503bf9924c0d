"""The peer Link over plain TCP (SHOAL_CLUSTER_LINK=tcp, cluster/tcplink.py): two real
nodes under circusd, one external etcd. The same guarantees as over gRPC: QoS 0/1/2
both ways, PUBACK only once the other node owns the message, what a restarted agent
(on a new link port) did not confirm sent again and delivered once, bad bytes on the
link port never take the agent down."""
from __future__ import annotations

import os
import signal
import socket
import struct

import pytest

from mqtt import PubAck, Publish
from proto import cluster_pb2 as pb
from tests.support.cluster import crosses_both_ways, publish, receive, running_cluster, subscribe, wait_nodes
from tests.support.node import wait_for

NAMES = ["t1", "t2"]


@pytest.fixture(scope="module")
def cluster():
    with running_cluster(NAMES, cluster_link="tcp", cluster_lease_ttl=5, cluster_hello_timeout=2) as c:
        yield c


def link_addr(cluster, i: int) -> tuple[str, int]:
    host, _, port = cluster.etcd.get_json(f"nodes/{NAMES[i]}")["link"].rpartition(":")
    return host, int(port)


def test_nodes_advertise_their_link_and_use_it(cluster):
    for i, n in enumerate(cluster.nodes):
        host, port = link_addr(cluster, i)
        assert host == "127.0.0.1" and port > 0
        assert f"link={host}:{port}" in n.log()  # the agent's 'agent serving' line


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_crosses_both_ways(cluster, clients, qos):
    crosses_both_ways(clients, *cluster.nodes, qos, "c30t", "tl")


def test_restarted_agent_on_a_new_port_gets_what_it_did_not_confirm(cluster, clients):
    """t2's agent stopped with a QoS 1 message on its way, then killed: circus starts
    a new agent, which listens on a new link port and says so in etcd; t1 links there
    and sends again; the subscriber gets the message once, the publisher its PUBACK."""
    a, b = cluster.nodes
    sub = clients.connect(b.port, "tl-resend-sub")
    subscribe(sub, "c30t/resend", 1)
    pub = clients.connect(a.port, "tl-resend-pub")
    old = link_addr(cluster, 1)
    agent = b.agent_pid()
    mark = b._log_size()
    os.kill(agent, signal.SIGSTOP)
    pub.send(Publish("c30t/resend", b"again", 1, packet_id=3))
    assert pub.barrier() == []  # not acknowledged while t2's agent is stopped
    os.kill(agent, signal.SIGKILL)
    wait_for(lambda: "process=agent event='joined the cluster'" in b.log(since=mark), 60, 0.1, "t2's new agent")
    assert pub.expect(PubAck, timeout=30).packet_id == 3
    assert [p.payload for p in receive(sub, 1)] == [b"again"]
    assert sub.barrier() == []  # once
    assert link_addr(cluster, 1) != old
    wait_nodes(cluster.nodes, set(NAMES))


def test_bad_bytes_on_the_link_port_do_not_take_the_agent_down(cluster, clients):
    """A frame longer than SHOAL_CLUSTER_MAX_FRAME, and bytes that are no frame: each
    closes its own connection (logged); the agent goes on routing."""
    a, b = cluster.nodes
    addr = link_addr(cluster, 0)
    hello = pb.Frame(hello=pb.Hello(node="intruder", wire=1, instance="x")).SerializeToString()
    for junk in (struct.pack(">I", 1 << 31), struct.pack(">I", 6) + b"\xff" * 6):
        with socket.create_connection(addr, timeout=20) as s:
            s.sendall(struct.pack(">I", len(hello)) + hello + junk)
            s.settimeout(20)
            while s.recv(4096):  # our hello comes back, then the agent closes the link
                pass
    wait_for(lambda: a.log().count("bad frame from a peer: link closed") >= 2, 30, 0.1, "the agent's log lines")
    sub = clients.connect(a.port, "tl-bad-sub")
    subscribe(sub, "c30t/after", 1)
    pub = clients.connect(b.port, "tl-bad-pub")
    publish(pub, "c30t/after", b"still", 1)
    assert [p.payload for p in receive(sub, 1)] == [b"still"]


def test_a_connection_that_never_says_hello_is_closed(cluster):
    """SHOAL_CLUSTER_HELLO_TIMEOUT (2 s here): a connection to the link port that sends
    nothing is closed, with a log line naming its address (before, it stayed open)."""
    a = cluster.nodes[0]
    mark = a._log_size()
    with socket.create_connection(link_addr(cluster, 0), timeout=30) as s:
        s.settimeout(30)
        local = s.getsockname()[1]
        assert s.recv(4096) == b""  # closed by the agent, well before the 30 s
    line = wait_for(lambda: next((ln for ln in a.log(since=mark).splitlines() if "sent no hello" in ln), None),
                    30, 0.1, "the agent's log line")
    assert f":{local}" in line
