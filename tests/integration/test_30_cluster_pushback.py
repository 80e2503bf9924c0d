"""A peer that cannot keep up pushes back (issue 10): with SHOAL_CLUSTER_MAX_QUEUED=5
and the receiving node's agent stopped, the sending agent stops reading from its
router once five messages wait for that peer; nothing acknowledged is lost, and
everything flows once the peer is back."""
from __future__ import annotations

import os
import signal

from mqtt import PubAck, Publish
from tests.support.cluster import Etcd, cluster_node, receive, subscribe, wait_nodes
from tests.support.node import wait_for


def test_full_peer_queue_pushes_back(clients):
    etcd = Etcd().start()
    a = cluster_node("pa", etcd.url, cluster_max_queued=5, cluster_lease_ttl=15)
    b = cluster_node("pb", etcd.url, cluster_max_queued=5, cluster_lease_ttl=15)
    try:
        a.start(60)
        b.start(60)
        wait_nodes([a, b], {"pa", "pb"})
        sub = clients.connect(b.port, "pb-sub")
        subscribe(sub, "c32/#", 1)
        pub = clients.connect(a.port, "pa-pub")
        agent = b.agent_pid()
        os.kill(agent, signal.SIGSTOP)
        try:
            for i in range(20):
                pub.send(Publish(f"c32/{i}", b"m%02d" % i, 1, packet_id=i + 1))
            wait_for(lambda: "peer queue full: not reading from the router" in a.log(), 30, 0.1, "push back")
            assert [p for p in pub.barrier() if isinstance(p, PubAck)] == []
        finally:
            os.kill(agent, signal.SIGCONT)
        acks = set()
        while len(acks) < 20:
            p = pub.expect(PubAck, timeout=30)
            acks.add(p.packet_id)
        assert acks == set(range(1, 21))
        assert sorted(p.payload for p in receive(sub, 20)) == [b"m%02d" % i for i in range(20)]
        wait_for(lambda: "peer queue drained: reading again" in a.log(), 30, 0.1, "reading again")
    finally:
        a.stop()
        b.stop()
        etcd.stop()
