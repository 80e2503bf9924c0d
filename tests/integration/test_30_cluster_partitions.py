"""Partitions (issue 11 point 6) in network namespaces: each of three one-worker nodes runs
under circusd inside a namespace of its own (tests/support/netns.py), joined by a veth pair
to a bridge in the root namespace, where etcd listens and this test's clients run. A link
set down cuts a node off from etcd, from its peers and from every client outside; clients
inside its namespace (devices on its side of the split) still reach it.

What must hold: the cut node stops acting as owner before its lease can have expired (its
clients get DISCONNECT 0x9C, CONNECTs get 0x88) while the majority goes on serving; a client
id of the cut node connects on the majority side once the lease is gone, never while the
old connection lives; its will fires once, by the majority's leader, and not again when
the link comes back; the node rejoins and never resumes its stale copy of the session.
A slow, congested link does not cost a node its ownership.

Needs root (network namespaces); skipped otherwise, with the reason. Lease TTL 3 s: at 2 s
the slow link's drops (TCP retransmits of a keep-alive, 100 ms queues each way) cost the
slowed node its lease now and then (1 failure in about 5 clean-clone runs), which is what
its test asserts does not happen on a merely slow link.
"""
from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

from mqtt import Connack, Disconnect, Prop, Publish, Will
from tests.support import netns
from tests.support.cluster import Etcd, cluster_node, publish, receive, status, subscribe, wait_nodes
from tests.support.node import free_port, start_all, wait_for
from tests.support.raw import Closed, RawClient

NAMES = ["p1", "p2", "p3"]
EXPIRY = {Prop.SESSION_EXPIRY_INTERVAL: 300}
TTL = 3

why_not = netns.available()
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")


@pytest.fixture(scope="module")
def cluster():
    net = netns.Net()
    etcd = None
    nodes = []
    try:
        etcd = Etcd(host=net.root_addr).start()
        spaces = [net.add() for _ in NAMES]
        for name, ns in zip(NAMES, spaces):
            nodes.append(cluster_node(
                name, etcd.url, netns=ns, host="0.0.0.0", cluster_addr=f"{ns.addr}:{free_port()}",
                cluster_lease_ttl=TTL, cluster_lease_loss="disconnect"))
        nodes[0].start(90)  # the first joins alone and leads; the others boot side by side
        start_all(nodes[1:], 90)
        wait_nodes(nodes, set(NAMES), 60)
        yield SimpleNamespace(net=net, etcd=etcd, nodes=nodes, spaces=spaces)
    finally:
        for n in nodes:
            n.stop()
        if etcd is not None:
            etcd.stop()
        net.close()


def node(cluster, name: str):
    i = NAMES.index(name)
    return cluster.nodes[i], cluster.spaces[i]


def outside(cluster, opened, name: str, version: int = 5) -> RawClient:
    """A client in the root namespace, over the bridge and the node's link."""
    n, ns = node(cluster, name)
    c = RawClient(n.port, version, host=ns.addr, timeout=10)
    opened.append(c)
    return c


def inside(cluster, opened, name: str, version: int = 5) -> RawClient:
    """A client on the node's side of any split: in its namespace, over its loopback."""
    n, ns = node(cluster, name)
    c = ns.call(RawClient, n.port, version, host="127.0.0.1", timeout=10)
    opened.append(c)
    return c


def session(c: RawClient, cid: str, clean_start: bool = False, will: Will | None = None) -> Connack:
    ack = c.connect(cid, clean_start=clean_start, will=will, properties=dict(EXPIRY))
    assert isinstance(ack, Connack), ack
    return ack


def owner(cluster, cid: str):
    rec = cluster.etcd.get_json(f"sessions/owners/{cid}")
    return rec["node"] if rec else None


def alive_in_etcd(cluster, name: str) -> bool:
    return f"nodes/{name}" in cluster.etcd.keys("nodes/")


def pending(c: RawClient, timeout: float) -> list:
    """What the broker sent on c (up to its close) within timeout; [..., "closed"] when it closed."""
    got = []
    try:
        while True:
            got.append(c.recv(timeout))
    except Closed:
        got.append("closed")
    except TimeoutError:
        pass
    return got


def test_cut_node_fences_itself_majority_serves_will_once(cluster, opened):
    """p3's link goes down with a persistent session (with a will) and a will subscriber on
    its side. p3 disconnects both with 0x9C, publishes no will there and refuses CONNECTs;
    the id, tried on p1 again and again from the moment of the cut, is refused while p3's
    lease lives and accepted (session present = 0) only after p3 closed the old connection;
    the leader publishes the will once. The link comes back: p3 rejoins and serves, the
    stale copy (subscribed to c33/stale) is never resumed, the will never fires again."""
    cid = "cut-victim"
    p3, ns3 = node(cluster, "p3")
    wsub = outside(cluster, opened, "p1")
    assert session(wsub, "cut-wsub", clean_start=True).reason_code == 0
    subscribe(wsub, "c33/will/#", 1)
    near = inside(cluster, opened, "p3")  # a subscriber of the will on the cut side
    assert session(near, "cut-near", clean_start=True).reason_code == 0
    subscribe(near, "c33/will/#", 1)
    victim = inside(cluster, opened, "p3")
    will = Will("c33/will/victim", b"will-victim", 1, False, {})
    assert session(victim, cid, clean_start=True, will=will).reason_code == 0
    subscribe(victim, "c33/stale", 1)
    wait_for(lambda: cluster.etcd.keys(f"wills/{cid}") == [f"wills/{cid}"], 20, 0.05, "the will in etcd")
    assert owner(cluster, cid) == "p3"
    # traffic from p1 and p2 to p3 before the cut (their links to p3 number their messages)
    pub = outside(cluster, opened, "p2")
    assert session(pub, "cut-pub", clean_start=True).reason_code == 0
    pub1 = outside(cluster, opened, "p1")
    assert session(pub1, "cut-pub1", clean_start=True).reason_code == 0
    for i in range(5):
        assert publish(pub, "c33/will/before", b"b2-%d" % i, 1, pid=20 + i) == 0
        assert publish(pub1, "c33/will/before", b"b1-%d" % i, 1, pid=20 + i) == 0
    assert len(receive(near, 10)) == 10 and len(receive(wsub, 10)) == 10

    ns3.cut()
    try:
        # the majority side: the id connects on p1 only once p3 let it go
        attempts, refused = 0, 0
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, f"{cid} never connected on p1 ({attempts} tries)"
            attempts += 1
            c = outside(cluster, opened, "p1")
            ack = session(c, cid)
            if ack.reason_code == 0:
                break
            assert ack.reason_code == 0x88, ack  # server unavailable: p3 may still own the id
            refused += 1
            c.close()
        assert not ack.session_present  # the owner was unreachable: a fresh session
        # by the time p1 accepted, p3 had closed the old connection (0x9C, nothing else)
        got = pending(victim, 5)
        assert got[:1] and isinstance(got[0], Disconnect) and got[0].reason_code == 0x9C, got
        assert got[1:] == ["closed"], got
        got = pending(near, 5)
        assert len(got) == 2 and isinstance(got[0], Disconnect) and got[0].reason_code == 0x9C, got
        assert not alive_in_etcd(cluster, "p3")
        # p3 accepts nobody meanwhile
        refused_there = inside(cluster, opened, "p3")
        ack = session(refused_there, "cut-late", clean_start=True)
        assert ack.reason_code == 0x88, ack
        # the leader published the will, once; the majority serves the new session
        assert [p.payload for p in receive(wsub, 1, timeout=30)] == [b"will-victim"]
        subscribe(c, "c33/fresh", 1)
        assert publish(pub, "c33/fresh", b"during", 1) == 0
        assert [p.payload for p in receive(c, 1)] == [b"during"]
        assert owner(cluster, cid) == "p1"
    finally:
        ns3.heal()
    wait_nodes(cluster.nodes, set(NAMES), 60)
    wait_for(lambda: "cluster lease held: accepting clients" in p3.log().rsplit("cluster lease lost", 1)[-1],
             30, 0.1, "p3 to serve again")
    c.close()  # away: the session stays with p1, queueing
    # (0x10, no matching subscribers, once p3's stale route is gone; either way it reaches nobody)
    assert publish(pub, "c33/stale", b"stale", 1, pid=2) in (0, 0x10)
    assert publish(pub, "c33/fresh", b"fresh", 1, pid=3) == 0
    back = inside(cluster, opened, "p3")
    ack = session(back, cid)
    assert ack.reason_code == 0 and ack.session_present, ack  # p1's session, pulled over
    assert [p.payload for p in receive(back, 1)] == [b"fresh"]  # never the stale copy's
    assert owner(cluster, cid) == "p3"
    # the rejoined node is routed again: a publish on the majority side reaches it at once
    assert publish(pub, "c33/fresh", b"live", 1, pid=5) == 0
    assert [p.payload for p in receive(back, 1)] == [b"live"]
    fresh = inside(cluster, opened, "p3")
    assert session(fresh, "cut-newcomer", clean_start=True).reason_code == 0
    subscribe(fresh, "c33/newcomer", 1)  # (its SUBACK: routed on every live node)
    # from both other nodes, whose links to p3 were made again when it came back (a link
    # numbered its messages from 1 again, and p3 took them for ones it had: lost)
    for i in range(3):
        assert publish(pub, "c33/newcomer", b"p2-%d" % i, 1, pid=6 + i) == 0
        assert publish(pub1, "c33/newcomer", b"p1-%d" % i, 1, pid=6 + i) == 0
    assert sorted(p.payload for p in receive(fresh, 6)) == sorted(b"p%d-%d" % (n, i) for n in (1, 2) for i in range(3))
    # no second will, on either side: a sentinel comes next
    assert publish(pub, "c33/will/sentinel", b"sentinel", 1, pid=4) == 0
    got = [wsub.expect(Publish, 20)]
    got += wsub.barrier()
    assert [(p.topic, p.payload) for p in got] == [("c33/will/sentinel", b"sentinel")], got
    assert "will-victim" not in p3.log()


def test_slow_link_keeps_ownership(cluster, opened):
    """p2's link narrowed to 400 kbit/s both ways and kept full by filler traffic, so that
    every packet waits about 100 ms in a queue each way, and some are dropped (the TCP
    handshake time is measured below): p2 keeps its lease
    (no 0x9C, it stays in etcd), serves its client across the slow link, and a takeover
    of that client's session from p1 over the slow link ends with one live session."""
    cid = "slow-one"
    p2, ns2 = node(cluster, "p2")
    mark = p2._log_size()
    c = outside(cluster, opened, "p2")
    assert session(c, cid, clean_start=True).reason_code == 0
    subscribe(c, "c33/slow", 1)
    ns2.slow()
    filler = netns.Congestion(ns2, cluster.net.root_addr)
    try:
        # the link is slow: a TCP handshake from inside p2's namespace to etcd takes long
        def connect_ms():
            t0 = time.monotonic()
            s = ns2.call(socket.create_connection, (cluster.etcd.host, cluster.etcd.client_port), 10)
            s.close()
            return (time.monotonic() - t0) * 1000
        def slowed():
            rtts = sorted(connect_ms() for _ in range(5))
            return rtts if rtts[2] > 100 else None
        rtts = wait_for(slowed, 30, 0, "the queues of p2's link to fill")
        pub = outside(cluster, opened, "p1")
        assert session(pub, "slow-pub", clean_start=True).reason_code == 0
        for i in range(3):  # across more than one lease TTL of slow link
            assert publish(pub, "c33/slow", f"m{i}".encode(), 1, pid=1 + i, timeout=60) == 0
            assert [p.payload for p in receive(c, 1, timeout=60)] == [f"m{i}".encode()]
        assert alive_in_etcd(cluster, "p2")
        assert owner(cluster, cid) == "p2"
        # the session moves to p1 over the slow link: one live session
        c1 = outside(cluster, opened, "p1")
        ack = session(c1, cid)
        assert ack.reason_code == 0 and ack.session_present, ack
        got = pending(c, 30)
        assert got[:1] and isinstance(got[0], Disconnect) and got[0].reason_code == 0x8E, got
        assert publish(pub, "c33/slow", b"after", 1, pid=9, timeout=60) == 0
        assert [p.payload for p in receive(c1, 1, timeout=60)] == [b"after"]
        assert owner(cluster, cid) == "p1"
    finally:
        filler.stop()
        ns2.fast()
    log = p2.log(since=mark)
    assert "cluster lease lost" not in log and "lease lost" not in log, (rtts, log[-3000:])
    assert status(p2).get("joined")
    print(f"TCP handshake p2 -> etcd over the slowed link, ms: {[round(r) for r in rtts]}")
