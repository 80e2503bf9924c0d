"""A peer that cannot keep up pushes back (issue 10): with SHOAL_CLUSTER_MAX_QUEUED=5
and the receiving node's agent stopped, the sending agent stops reading from its
router once five messages wait for that peer; nothing acknowledged is lost, and
everything flows once the peer is back."""
from __future__ import annotations

from tests.support.cluster import Etcd, cluster_node, pushed_back_then_delivered, wait_nodes


def test_full_peer_queue_pushes_back(clients):
    etcd = Etcd().start()
    a = cluster_node("pa", etcd.url, cluster_max_queued=5, cluster_lease_ttl=15)
    b = cluster_node("pb", etcd.url, cluster_max_queued=5, cluster_lease_ttl=15)
    try:
        a.start(60)
        b.start(60)
        wait_nodes([a, b], {"pa", "pb"})
        pushed_back_then_delivered(clients, a, b, b.agent_pid(), "c32", "pb")
    finally:
        a.stop()
        b.stop()
        etcd.stop()
