"""A peer that cannot keep up pushes back (issue 10): with SHOAL_CLUSTER_MAX_QUEUED=5
and the process on the receiving node's path stopped, the sending agent stops reading
from its router once five messages wait for that peer; nothing acknowledged is lost, and
everything flows once the peer is back.

What is on the path depends on the link: on `direct` (the default) the sending agent
writes straight to the receiving node's router (the receiving agent is off the path), so
the router is stopped; on `grpc` and `tcp` the receiving agent takes the publishes and is
the one stopped."""
from __future__ import annotations

import os

import pytest

from common.settings import Settings
from tests.support.cluster import Etcd, cluster_node, pushed_back_then_delivered, wait_nodes


def link_in_use(link: str | None) -> str:
    """The link the nodes run: the one given, else SHOAL_CLUSTER_LINK of this run, else the default."""
    return link or os.environ.get("SHOAL_CLUSTER_LINK") or Settings.model_fields["cluster_link"].default


@pytest.mark.parametrize("link", [None, "grpc"], ids=["default", "grpc"])
def test_full_peer_queue_pushes_back(clients, link):
    extra = {"cluster_link": link} if link else {}
    etcd = Etcd().start()
    a = cluster_node("pa", etcd.url, cluster_max_queued=5, cluster_lease_ttl=15, **extra)
    b = cluster_node("pb", etcd.url, cluster_max_queued=5, cluster_lease_ttl=15, **extra)
    try:
        a.start(60)
        b.start(60)
        wait_nodes([a, b], {"pa", "pb"})
        on_path = b.router_pid() if link_in_use(link) == "direct" else b.agent_pid()
        pushed_back_then_delivered(clients, a, b, on_path, "c32", "pb")
    finally:
        a.stop()
        b.stop()
        etcd.stop()
