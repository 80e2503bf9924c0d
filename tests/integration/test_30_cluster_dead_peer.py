"""A peer that stops answering is found within about SHOAL_CLUSTER_LINK_DEAD_AFTER (3 s
here), not when its lease expires (30 s here) or never: a frozen process's kernel still
acknowledges TCP, so only the links' own heartbeats can tell.

- the direct data link: ZeroMQ heartbeats (ZMQ_HEARTBEAT_IVL / _TIMEOUT / _TTL): with the
  receiving router SIGSTOPped, the sender logs the data link lost and connects again; the
  message it did not confirm is delivered once when the router runs again;
- the agents' gRPC Link (on `direct` beside the data link, and on `grpc`): gRPC keep-alive
  (keepalive_time_ms / keepalive_timeout_ms, the server taking the pings): with the other
  node's agent SIGSTOPped, the Link is found down and made again once it runs.
"""
from __future__ import annotations

import os
import signal

import pytest

from mqtt import PubAck, Publish
from tests.support.cluster import publish, receive, running_cluster, subscribe
from tests.support.node import wait_for

SETTINGS = dict(cluster_link_dead_after=3, cluster_lease_ttl=30, cluster_data_fallback_after=2)


def _cluster(link: str):
    with running_cluster([f"k{link[0]}1", f"k{link[0]}2"], cluster_link=link, **SETTINGS) as c:
        c.link = link
        yield c


@pytest.fixture(scope="module")
def direct():
    yield from _cluster("direct")


@pytest.fixture(scope="module")
def grpc():
    yield from _cluster("grpc")


def test_a_frozen_router_is_found_dead_on_the_data_link(direct, clients):
    cluster = direct
    a, b = cluster.nodes
    peer = f"k{cluster.link[0]}2"
    wait_for(lambda: f"direct data link to the peer's router\" peer={peer}" in a.log(), 30, 0.05, "the data link")
    sub = clients.connect(b.port, "kd-sub")
    subscribe(sub, "kd/#", 1)
    pub = clients.connect(a.port, "kd-pub")
    router = b.router_pid()
    mark = a._log_size()
    os.kill(router, signal.SIGSTOP)
    try:
        pub.send(Publish("kd/x", b"frozen", 1, packet_id=3))
        wait_for(lambda: f"data link to the peer's router lost: connecting again\" peer={peer}" in a.log(since=mark),
                 20, 0.1, "the frozen router's data link found dead")
        assert [p for p in pub.barrier() if isinstance(p, PubAck)] == []
    finally:
        os.kill(router, signal.SIGCONT)
    assert pub.expect(PubAck, timeout=30).packet_id == 3
    assert [p.payload for p in receive(sub, 1)] == [b"frozen"]
    assert publish(pub, "kd/x", b"sentinel", 1, pid=4) == 0
    assert [p.payload for p in receive(sub, 1)] == [b"sentinel"]  # the frozen one came once


@pytest.mark.parametrize("link", ["direct", "grpc"])
def test_a_frozen_agent_is_found_dead_on_the_link(request, link, clients):
    cluster = request.getfixturevalue(link)
    a, b = cluster.nodes
    peer = f"k{cluster.link[0]}2"
    agent = b.agent_pid()
    mark = a._log_size()
    os.kill(agent, signal.SIGSTOP)
    try:
        wait_for(lambda: f"'peer link down, reconnecting' peer={peer}" in a.log(since=mark), 20, 0.1,
                 "the frozen agent's Link found dead (keep-alive)")
    finally:
        os.kill(agent, signal.SIGCONT)
    wait_for(lambda: f"'peer link up again' peer={peer}" in a.log(since=mark), 60, 0.1, "the Link made again")
    sub = clients.connect(b.port, f"kl-sub-{cluster.link}")
    subscribe(sub, "kl/#", 1)
    pub = clients.connect(a.port, f"kl-pub-{cluster.link}")
    assert publish(pub, "kl/x", b"after", 1) == 0
    assert [p.payload for p in receive(sub, 1)] == [b"after"]
