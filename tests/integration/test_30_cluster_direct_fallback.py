"""The direct data link (the default SHOAL_CLUSTER_LINK) when a peer's data address cannot be
reached while the agents' Link can: the sender falls back to the Link after
SHOAL_CLUSTER_DATA_FALLBACK_AFTER, logs it once with the peer, its address and what to fix,
counts it, tries the data link again with backoff and comes back to it; nothing
acknowledged is lost, a QoS 2 message sent on the data link and sent again over the Link is
taken once, and after a flap what was not confirmed goes before anything newer.

Real sockets, no mocks: node f1 runs in the root network namespace, node f2 in one of its own
(tests/support/netns.py) with SHOAL_CLUSTER_DATA_ADDR=127.0.0.1:P, the mistake of a data
address on the loopback: f2 advertises 127.0.0.1:P, which from f1's host is f1's own loopback,
where nothing listens (connection refused). A relay (tests/support/relay.py) on f1's
127.0.0.1:P, whose other end is made inside f2's namespace, plays the firewall: closed, open,
holding what goes to f2's router, or cutting its connections. Needs root; skipped otherwise.
"""
from __future__ import annotations

import re
import socket
from types import SimpleNamespace

import pytest

from mqtt import PubAck, PubComp, PubRec, PubRel, Publish
from tests.support import netns
from tests.support.cluster import Etcd, cluster_node, publish, receive, subscribe, wait_nodes
from tests.support.node import free_port, wait_for
from tests.support.raw import RawClient
from tests.support.relay import Relay

why_not = netns.available()
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")

FALLBACK_AFTER = 2
FELL_BACK = "peer router's data address unreachable: its publishes go over the Link"
BACK = "peer router's data address reachable again: its publishes go on the direct data link"


@pytest.fixture(scope="module", params=["agent", "router"])
def cluster(request):
    """Both senders: the agent's data link (cluster/datalink.py), and the router's
    (SHOAL_CLUSTER_ROUTER_SENDS, router/sender.py), which hands a fallen-back peer's publishes to
    its agent for the Link; every test runs on each."""
    net = netns.Net()
    etcd = relay = None
    nodes = []
    try:
        etcd = Etcd(host=net.root_addr).start()
        ns = net.add()
        port = free_port()  # f2's data port: on f2's loopback, and the relay's on f1's
        relay = Relay("127.0.0.1", port, lambda: ns.call(socket.create_connection, ("127.0.0.1", port), 5))
        # (direct, the default, named: a run with SHOAL_CLUSTER_LINK=grpc in its environment
        # tests it too.) Heartbeats slow enough that f2's router keeps the relay's connection
        # while the relay holds what f1 sent (test 3)
        common = dict(cluster_link="direct", cluster_lease_ttl=10, cluster_data_fallback_after=FALLBACK_AFTER,
                      cluster_link_dead_after=60, cluster_router_sends=str(request.param == "router").lower())
        f1 = cluster_node("f1", etcd.url, cluster_addr=f"{net.root_addr}:{free_port()}", **common)
        f2 = cluster_node("f2", etcd.url, netns=ns, host="0.0.0.0", cluster_addr=f"{ns.addr}:{free_port()}",
                          cluster_data_addr=f"127.0.0.1:{port}", **common)
        nodes = [f1, f2]
        f1.start(90)
        f2.start(90)
        wait_nodes(nodes, {"f1", "f2"}, 60)
        yield SimpleNamespace(net=net, etcd=etcd, f1=f1, f2=f2, ns=ns, relay=relay, port=port,
                              addr=f"127.0.0.1:{port}", sender=request.param)
    finally:
        for n in nodes:
            n.stop()
        if relay is not None:
            relay.close()
        if etcd is not None:
            etcd.stop()
        net.close()


def metrics(n) -> dict[str, float]:
    """The node's /metrics (its admin socket), unlabelled by node: {name: value}."""
    from tests.support.cluster import admin_metrics

    text = admin_metrics(n)
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(shoal_[a-z0-9_]+)(?:\{[^}]*\})? ([-0-9.e+]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def on_f1(cluster, opened, cid: str) -> RawClient:
    c = RawClient(cluster.f1.port, 5, timeout=10)
    c.connect(cid)
    opened.append(c)
    return c


def on_f2(cluster, opened, cid: str) -> RawClient:
    c = RawClient(cluster.f2.port, 5, host=cluster.ns.addr, timeout=10)
    c.connect(cid)
    opened.append(c)
    return c


def test_1_an_unreachable_data_address_falls_back_to_the_link(cluster, opened):
    """f1 cannot reach 127.0.0.1:P: its QoS 2 publish for f2 goes over the Link after
    SHOAL_CLUSTER_DATA_FALLBACK_AFTER (PUBREC, delivered once); logged once with the peer,
    the address and what to fix; counted. f2 reaches f1's data address: that way is direct."""
    f1, f2 = cluster.f1, cluster.f2
    sub = on_f2(cluster, opened, "fb-sub")
    subscribe(sub, "fb/#", 2)
    pub = on_f1(cluster, opened, "fb-pub")
    assert publish(pub, "fb/1", b"over the link", 2, pid=1) == 0
    pub.send(PubRel(1))
    assert pub.expect(PubComp, timeout=30).packet_id == 1
    assert [p.payload for p in receive(sub, 1)] == [b"over the link"]
    for i in range(5):  # order per publisher on the Link
        pub.send(Publish("fb/seq", b"s%d" % i, 1, packet_id=10 + i))
    assert sorted(pub.expect(PubAck, timeout=30).packet_id for _ in range(5)) == list(range(10, 15))
    assert [p.payload for p in receive(sub, 5)] == [b"s%d" % i for i in range(5)]

    # (the log reaches its file through circusd, the agent's figures /metrics with its beat:
    # both a moment later)
    wait_for(lambda: FELL_BACK in f1.log(), 30, 0.1, "the fall back logged")
    wait_for(lambda: metrics(f1)["shoal_cluster_data_fallbacks_total"] == 1, 30, 0.1, "the fall back counted")
    lines = [line for line in f1.log().splitlines() if FELL_BACK in line]
    assert len(lines) == 1, lines  # once
    assert "peer=f2" in lines[0] and f"addr={cluster.addr}" in lines[0]
    assert f"process={cluster.sender} " in lines[0]  # (the agent's data link, or the router's)
    assert "SHOAL_CLUSTER_DATA_ADDR on f2" in lines[0] and "firewall" in lines[0]
    assert metrics(f1)["shoal_cluster_data_fallen_back"] == 1
    wait_for(lambda: metrics(f2)["shoal_cluster_received_total"] >= 6, 30, 0.1, "f2's agent took them (the Link)")

    # the other way f1's data address is reachable: direct, no fall back
    sub1 = on_f1(cluster, opened, "fb-sub1")
    subscribe(sub1, "fb1/#", 1)
    pub2 = on_f2(cluster, opened, "fb-pub2")
    before = metrics(f1)["shoal_router_peer_publishes_total"]
    assert publish(pub2, "fb1/x", b"direct", 1) == 0
    assert [p.payload for p in receive(sub1, 1)] == [b"direct"]
    assert metrics(f1)["shoal_router_peer_publishes_total"] == before + 1
    assert FELL_BACK not in f2.log()


def test_2_the_data_link_is_tried_again_and_taken_once_reachable(cluster, opened):
    """The way opens (the relay listens): f1's data link, tried again with backoff while
    the Link carried f2's publishes, gets a connection and the publishes come back to it."""
    f1, relay = cluster.f1, cluster.relay
    relay.listen()
    wait_for(lambda: BACK in f1.log(), 90, 0.1, "f1 back on the direct data link")
    assert f"peer=f2 addr={cluster.addr}" in next(line for line in f1.log().splitlines() if BACK in line)
    sub = on_f2(cluster, opened, "fb2-sub")
    subscribe(sub, "fb2/#", 1)
    pub = on_f1(cluster, opened, "fb2-pub")
    sent = relay.to_target
    received = metrics(cluster.f2)["shoal_router_peer_publishes_total"]
    assert publish(pub, "fb2/x", b"direct again", 1) == 0
    assert [p.payload for p in receive(sub, 1)] == [b"direct again"]
    assert relay.to_target > sent  # it went through the relay: the data link
    assert metrics(cluster.f2)["shoal_router_peer_publishes_total"] == received + 1
    wait_for(lambda: metrics(f1)["shoal_cluster_data_fallen_back"] == 0, 30, 0.1, "the figure")


def test_3_sent_on_the_data_link_then_over_the_link_is_taken_once(cluster, opened):
    """A QoS 2 publish goes on the data link and is held on the way (the relay holds it);
    the connection is lost and the way closed: f1 falls back and sends it again over the
    Link: PUBREC, delivered. Then the held copy reaches f2's router too: taken already
    (router/forward.py RemoteSeen, keyed by node, agent instance and seq on both paths), so
    the subscriber has it once."""
    f1, f2, relay = cluster.f1, cluster.f2, cluster.relay
    wait_for(lambda: metrics(f1)["shoal_cluster_data_fallen_back"] == 0, 60, 0.1, "f1 on the data link")
    sub = on_f2(cluster, opened, "fb3-sub")
    subscribe(sub, "fb3/#", 2)
    pub = on_f1(cluster, opened, "fb3-pub")
    relay.hold()
    pub.send(Publish("fb3/x", b"held-once", 2, packet_id=5))
    wait_for(lambda: b"held-once" in relay.held_bytes(), 30, 0.05, "the publish held on its way to f2's router")
    assert pub.barrier() == []  # no PUBREC: f2 has not got it
    fallbacks = metrics(f1)["shoal_cluster_data_fallbacks_total"]
    relay.close_listener()
    relay.cut_clients()  # f1's connection lost; the relay's connection to f2's router stays, holding the copy
    assert pub.expect(PubRec, timeout=30).packet_id == 5  # over the Link
    pub.send(PubRel(5))
    assert pub.expect(PubComp, timeout=30).packet_id == 5
    wait_for(lambda: metrics(f1)["shoal_cluster_data_fallbacks_total"] == fallbacks + 1, 30, 0.1, "counted")
    wait_for(lambda: f1.log().count(FELL_BACK) == 2, 30, 0.1, "logged once per fall back")
    repeats = metrics(f2)["shoal_router_remote_repeats_total"]
    relay.release()  # the data link's copy (and its resends) reach f2's router now
    wait_for(lambda: metrics(f2)["shoal_router_remote_repeats_total"] > repeats, 30, 0.1,
             "the held copy taken as a repeat")
    assert [p.payload for p in receive(sub, 1)] == [b"held-once"]  # once (nothing more by a PINGREQ round trip)
    assert publish(pub, "fb3/x", b"sentinel", 2, pid=6) == 0
    pub.send(PubRel(6))
    pub.expect(PubComp, timeout=30)
    assert [p.payload for p in receive(sub, 1)] == [b"sentinel"]
    relay.cut()


def test_4_after_a_flap_what_was_not_confirmed_goes_before_anything_newer(cluster, opened):
    """Three QoS 1 publishes go on the data link and are lost with its connection (held,
    then the relay cuts every connection and drops them); three more are published at once.
    The data link connects again (the relay listens) and sends the three unconfirmed ones
    first: the subscriber gets all six in order. (With ZeroMQ reconnecting by itself the
    three newer ones went on the new connection at once and the lost ones a second later.)"""
    f1, relay = cluster.f1, cluster.relay
    relay.listen()
    wait_for(lambda: f1.log().count(BACK) >= 2, 90, 0.1, "f1 back on the direct data link")
    sub = on_f2(cluster, opened, "fb4-sub")
    subscribe(sub, "fb4/#", 1)
    pub = on_f1(cluster, opened, "fb4-pub")
    assert publish(pub, "fb4/x", b"warm", 1, pid=1) == 0  # (direct: through the relay)
    assert [p.payload for p in receive(sub, 1)] == [b"warm"]
    relay.hold()
    for i in range(3):
        pub.send(Publish("fb4/x", b"ord-%d" % i, 1, packet_id=10 + i))
    wait_for(lambda: b"ord-2" in relay.held_bytes(), 30, 0.05, "the three publishes held")
    lost = f1.log().count("data link to the peer's router lost")
    mark = f1._log_size()
    relay.cut()  # lost in flight with the connection
    for i in range(3, 6):
        pub.send(Publish("fb4/x", b"ord-%d" % i, 1, packet_id=10 + i))
    acks = sorted(pub.expect(PubAck, timeout=30).packet_id for _ in range(6))
    assert acks == list(range(10, 16))
    assert [p.payload for p in receive(sub, 6)] == [b"ord-%d" % i for i in range(6)]
    wait_for(lambda: f1.log().count("data link to the peer's router lost") > lost, 30, 0.1, "the loss logged")
    assert FELL_BACK not in f1.log(since=mark)  # (a flap: it connected again at once)
