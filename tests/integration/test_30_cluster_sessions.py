"""Sessions across the cluster (issue 11): one owner per client id in etcd
(sessions/owners/<client id>, written with compare-and-swap), takeover between nodes with
the whole session, clean start cluster-wide, racing CONNECTs, a dead node's ids.

One module-scoped cluster of three one-worker nodes and one external etcd; a short
lease (SHOAL_CLUSTER_LEASE_TTL=3) so that a killed node is dropped quickly. The
test that kills a node comes last.
"""
from __future__ import annotations

import json
import re
import threading

import pytest

from mqtt import Connack, Disconnect, Prop, PubComp, PubRec, PubRel, Publish, Will
from tests.support.cluster import freeze, publish, receive, running_cluster, subscribe, thaw, wait_nodes
from tests.support.node import wait_for
from tests.support.raw import Closed, RawClient, connect

NAMES = {"s1", "s2", "s3"}
EXPIRY = {Prop.SESSION_EXPIRY_INTERVAL: 300}


@pytest.fixture(scope="module")
def cluster():
    with running_cluster(NAMES, cluster_lease_ttl=3, cluster_lease_loss="disconnect") as c:
        yield c


def port(cluster, name: str) -> int:
    return cluster.nodes[int(name[1:]) - 1].port


def owner(cluster, cid: str):
    rec = cluster.etcd.get_json(f"sessions/owners/{cid}")
    return rec["node"] if rec else None


def persistent(clients, cluster, name: str, cid: str, clean_start: bool = False) -> tuple[RawClient, Connack]:
    c = clients.open(port(cluster, name), 5)
    ack = c.connect(cid, clean_start=clean_start, properties=dict(EXPIRY))
    assert isinstance(ack, Connack) and ack.reason_code == 0, ack
    return c, ack


def test_owner_record(cluster, clients):
    """A CONNECT makes its node the owner in etcd (a record under the node's lease);
    the record goes when the session ends."""
    c = clients.connect(port(cluster, "s1"), "own-1")
    assert owner(cluster, "own-1") == "s1"
    rec = cluster.etcd.get_json("sessions/owners/own-1")
    node_kv = json.loads(cluster.etcd.ctl("get", "-w", "json", "nodes/s1").stdout)["kvs"][0]
    owner_kv = json.loads(cluster.etcd.ctl("get", "-w", "json", "sessions/owners/own-1").stdout)["kvs"][0]
    assert rec["lease"] == node_kv["lease"] == owner_kv["lease"]  # it goes with the node
    c.send(Disconnect(0))
    c.expect_closed()
    wait_for(lambda: owner(cluster, "own-1") is None, 20, 0.05, "the record to go")


def owner_figures(cluster, name: str) -> tuple[int, int]:
    """(owner transactions, owner records they carried) of a node's agent, from /metrics on
    its admin socket (the agent's figures come with its beat)."""
    from tests.support.cluster import admin_metrics

    text = admin_metrics(cluster.nodes[int(name[1:]) - 1])
    found = dict(re.findall(r"^shoal_cluster_(owner_txns_total|owner_records_total)(?:\{[^}]*\})? (\S+)$", text, re.M))
    return int(float(found.get("owner_txns_total", -1))), int(float(found.get("owner_records_total", -1)))


def test_connect_storm_owner_records_share_transactions(cluster, clients):
    """Many CONNECTs at once on one node: each id gets its record, written in shared etcd
    transactions (claims and deletes batched), and each record goes with its session."""
    before = owner_figures(cluster, "s2")
    assert before[0] >= 0, "no owner figures in /metrics"
    conns = [clients.open(port(cluster, "s2"), 4) for _ in range(40)]
    from mqtt import Connect

    for i, c in enumerate(conns):  # every CONNECT out before any CONNACK is read
        c.send(Connect(client_id=f"storm-{i}", clean_start=True, keepalive=60, version=4))
    for c in conns:
        ack = c.recv()
        assert isinstance(ack, Connack) and ack.reason_code == 0, ack
    keys = cluster.etcd.keys("sessions/owners/storm-")
    assert sorted(keys) == sorted(f"sessions/owners/storm-{i}" for i in range(40))
    assert {owner(cluster, f"storm-{i}") for i in (0, 17, 39)} == {"s2"}
    for c in conns:
        c.send(Disconnect(0))
    for c in conns:
        c.expect_closed()
    wait_for(lambda: not cluster.etcd.keys("sessions/owners/storm-"), 20, 0.05, "the storm's records to go")
    after = wait_for(lambda: (f := owner_figures(cluster, "s2"))[1] - before[1] >= 80 and f, 20, 0.1,
                     "the agent's figures to count 40 claims and 40 deletes")
    txns, records = after[0] - before[0], after[1] - before[1]
    assert records == 80, (before, after)
    assert 1 <= txns < records, (before, after)  # batched: fewer transactions than records


def test_clean_reconnect_on_the_same_node_keeps_its_record(cluster, clients):
    """A session that ends and its id that connects again at once on the same node: the
    end's delete (which may wait to go with other records) goes before the new claim, never
    after it (it compares this node's value, which the new record has too)."""
    for _ in range(3):
        c = clients.connect(port(cluster, "s3"), "again-1")
        assert owner(cluster, "again-1") == "s3"
        c.send(Disconnect(0))
        c.expect_closed()
    c = clients.connect(port(cluster, "s3"), "again-1")
    barrier = clients.connect(port(cluster, "s3"), "again-barrier")  # a later claim, through the same agent
    assert owner(cluster, "again-1") == "s3"
    barrier.send(Disconnect(0))
    barrier.expect_closed()
    wait_for(lambda: owner(cluster, "again-barrier") is None, 20, 0.05, "the barrier's record to go")
    assert owner(cluster, "again-1") == "s3"  # the live session's record is still there
    c.send(Disconnect(0))
    c.expect_closed()
    wait_for(lambda: owner(cluster, "again-1") is None, 20, 0.05, "the record to go")


def test_takeover_across_nodes_with_inflight_and_queue(cluster, clients):
    """A v5 session on s1 with QoS 1 and QoS 2 messages unacknowledged both ways moves
    to s2: s1 closes the old connection with 0x8E, s2 answers session present and
    redelivers the inflight messages with DUP (same packet ids), the QoS 2 the client
    sent is still open (PUBREL -> PUBCOMP); then, offline, the session queues on s2 and
    s3 pulls it over with the queue in order."""
    cid = "mover"
    c1, ack = persistent(clients, cluster, "s1", cid, clean_start=True)
    assert not ack.session_present
    subscribe(c1, "c32/mv/#", 2)
    pub = clients.connect(port(cluster, "s3"), "mv-pub")
    assert publish(pub, "c32/mv/a", b"a", 1) == 0
    assert publish(pub, "c32/mv/b", b"b", 2, pid=2) == 0
    first = [c1.expect(Publish, 20), c1.expect(Publish, 20)]
    assert [(p.payload, p.qos) for p in first] == [(b"a", 1), (b"b", 2)]
    c1.send(Publish("c32/elsewhere", b"in", 2, packet_id=7))  # incoming QoS 2 left open
    assert c1.expect(PubRec).packet_id == 7
    assert owner(cluster, cid) == "s1"

    c2, ack = persistent(clients, cluster, "s2", cid)
    assert ack.session_present
    got = c1.expect_closed(20)
    assert any(isinstance(p, Disconnect) and p.reason_code == 0x8E for p in got), got
    again = [c2.expect(Publish, 20), c2.expect(Publish, 20)]
    assert [(p.payload, p.qos, p.dup, p.packet_id) for p in again] == \
        [(b"a", 1, True, first[0].packet_id), (b"b", 2, True, first[1].packet_id)]
    c2.send(PubRel(7))
    assert c2.expect(PubComp).packet_id == 7
    assert owner(cluster, cid) == "s2"
    from mqtt import PubAck

    c2.send(PubAck(again[0].packet_id))
    c2.send(PubRec(again[1].packet_id))
    assert c2.expect(PubRel).packet_id == again[1].packet_id
    c2.send(PubComp(again[1].packet_id))
    # the route moved: a publish now reaches the session on s2
    assert publish(pub, "c32/mv/c", b"c", 1, pid=3) == 0
    assert [p.payload for p in receive(c2, 1)] == [b"c"]
    c2.close()  # away, no DISCONNECT: the session stays with s2, queueing
    for i in range(5):
        assert publish(pub, "c32/mv/q", f"q{i}".encode(), 1, pid=10 + i) == 0
    assert owner(cluster, cid) == "s2"  # an offline session stays with its owner
    c3, ack = persistent(clients, cluster, "s3", cid)
    assert ack.session_present
    assert [p.payload for p in receive(c3, 5)] == [f"q{i}".encode() for i in range(5)]
    assert owner(cluster, cid) == "s3"
    c3.close()


def test_a_late_takeover_request_whose_asker_gave_up_takes_nothing(cluster, clients):
    """A TakeoverSession that reaches the owner after its asker gave up (it waited in a
    partition; the asker put the owner's record back and refused its CONNECT): the record
    holds the owner's own value again, so the owner keeps the session and its client, and
    answers NEWER. Before, it closed the client (0x8E) and handed the session to nobody.
    The request is sent as the late one arrives: raw gRPC, with a token ahead of the
    owner's (as the asker's claim had)."""
    import grpc

    from proto import cluster_pb2 as pb
    from proto import cluster_pb2_grpc as pbg

    cid = "late-ask"
    c1, _ = persistent(clients, cluster, "s1", cid, clean_start=True)
    subscribe(c1, "c32/late/#", 1)
    assert owner(cluster, cid) == "s1"
    rec = json.loads(cluster.etcd.ctl("get", "-w", "json", f"sessions/owners/{cid}").stdout)["kvs"][0]
    s1 = cluster.nodes[0]
    with grpc.insecure_channel(s1.env["SHOAL_CLUSTER_ADDR"]) as ch:
        reply = pbg.PeerStub(ch).TakeoverSession(
            pb.TakeoverRequest(client_id=cid, clean_start=False, node="s2", token=int(rec["mod_revision"]) + 1000),
            timeout=20)
    assert reply.result == pb.TakeoverReply.NEWER, reply
    assert owner(cluster, cid) == "s1"
    pub = clients.connect(port(cluster, "s3"), "late-pub")
    assert publish(pub, "c32/late/a", b"still here", 1) == 0
    assert [p.payload for p in receive(c1, 1)] == [b"still here"]  # the same connection, not closed
    assert "session kept" in node_log(cluster, "s1")


def node_log(cluster, name: str) -> str:
    return cluster.nodes[int(name[1:]) - 1].log()


def test_clean_start_discards_cluster_wide(cluster, clients):
    """Clean start on s2 ends the session s1 had: present = 0, its subscription gone
    on every node; back on s1 without clean start there is nothing to resume."""
    cid = "cleaner"
    c1, _ = persistent(clients, cluster, "s1", cid, clean_start=True)
    subscribe(c1, "c32/clean", 1)
    c1.close()
    pub = clients.connect(port(cluster, "s3"), "clean-pub")
    assert publish(pub, "c32/clean", b"queued", 1) == 0
    c2, ack = persistent(clients, cluster, "s2", cid, clean_start=True)
    assert not ack.session_present
    assert publish(pub, "c32/clean", b"nobody", 1, pid=2) == 0
    assert c2.barrier() == []
    c2.send(Disconnect(0, {Prop.SESSION_EXPIRY_INTERVAL: 0}))
    c2.expect_closed()
    wait_for(lambda: owner(cluster, cid) is None, 20, 0.05, "the record to go")
    c3, ack = persistent(clients, cluster, "s1", cid)
    assert not ack.session_present
    assert c3.barrier() == []
    c3.close()


def test_racing_connects_end_with_one_live_session(cluster, clients):
    """The same client id connects on the three nodes at once, ten rounds: after each
    round exactly one connection is alive and etcd names its node."""
    cid = "racer"
    for rnd in range(10):
        results: dict[str, object] = {}

        def go(name):
            c = None
            try:
                c = RawClient(port(cluster, name), 5, timeout=20)
                ack = c.connect(cid, clean_start=False, properties=dict(EXPIRY))
                results[name] = (c, ack)
            except Exception as e:  # noqa: BLE001 (recorded and asserted on below)
                if c is not None:
                    c.close()
                results[name] = e

        threads = [threading.Thread(target=go, args=(n,)) for n in sorted(NAMES)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        live = []
        for name, r in results.items():
            assert not isinstance(r, Exception), (name, r)
            c, ack = r
            if ack.reason_code != 0:
                assert ack.reason_code == 0x88, ack
                continue
            try:
                rest = c.barrier()
                assert all(isinstance(p, (Publish, Disconnect)) for p in rest), rest
                if any(isinstance(p, Disconnect) for p in rest):
                    continue
                live.append(name)
            except Closed:
                pass
        try:
            assert len(live) == 1, (rnd, live, {n: r[1] for n, r in results.items()})
            wait_for(lambda: owner(cluster, cid) == live[0], 20, 0.05, f"etcd to name {live[0]}")
        finally:
            for r in results.values():
                if not isinstance(r, Exception):
                    r[0].close()


def leader_seen(clients, cluster, name: str) -> str:
    c = clients.connect(port(cluster, name), f"leader-probe-{name}")
    subscribe(c, "$SYS/broker/cluster/leader", 0)
    p = c.expect(Publish, 20)
    c.close()
    return p.payload.decode()


def test_leader_named_everywhere(cluster, clients):
    """One leader, held in etcd under its node's lease, named by every node in $SYS."""
    key = cluster.etcd.ctl("get", "--print-value-only", "leader").stdout.strip()
    assert key in NAMES
    wait_for(lambda: all(leader_seen(clients, cluster, n) == key for n in sorted(NAMES)), 20, 0.2,
             "every node to name the leader")


def with_will(clients, cluster, name: str, cid: str, topic: str, delay: int) -> RawClient:
    c = clients.open(port(cluster, name), 5)
    will = Will(topic, f"will-{cid}".encode(), 1, False, {Prop.WILL_DELAY_INTERVAL: delay} if delay else {})
    ack = c.connect(cid, clean_start=True, will=will, properties=dict(EXPIRY))
    assert ack.reason_code == 0, ack
    c.barrier()
    wait_for(lambda: cluster.etcd.keys(f"wills/{cid}") == [f"wills/{cid}"], 20, 0.05, f"wills/{cid} in etcd")
    return c


def test_will_record_follows_the_client(cluster, clients):
    """A will is in etcd while its client is connected; a normal DISCONNECT removes it
    (the will is not published); an abnormal close on a live node publishes it once."""
    sub = clients.connect(port(cluster, "s1"), "w-sub")
    subscribe(sub, "c32/wl/#", 1)
    c = with_will(clients, cluster, "s2", "w-normal", "c32/wl/normal", 0)
    c.send(Disconnect(0))
    c.expect_closed()
    wait_for(lambda: cluster.etcd.keys("wills/w-normal") == [], 20, 0.05, "the record to go")
    c = with_will(clients, cluster, "s2", "w-abrupt", "c32/wl/abrupt", 0)
    c.close()
    assert [p.payload for p in receive(sub, 1)] == [b"will-w-abrupt"]
    assert cluster.etcd.keys("wills/w-abrupt") == []


def test_frozen_node_fences_itself(cluster, clients):
    """s2 frozen (SIGSTOP of every process) past its lease: the id of its client connects
    on s1 afresh; s2, thawed, disconnects its old client with 0x9C before serving it
    anything, refuses CONNECTs until it holds a lease again, then serves again."""
    old, _ = persistent(clients, cluster, "s2", "frozen-1", clean_start=True)
    subscribe(old, "c32/fz", 1)
    s2 = cluster.nodes[1]
    pids = freeze(s2)
    try:
        wait_for(lambda: "nodes/s2" not in cluster.etcd.keys("nodes/"), 30, 0.1, "s2's lease to expire")
        new, ack = persistent(clients, cluster, "s1", "frozen-1")
        assert not ack.session_present
        pub = clients.connect(port(cluster, "s3"), "fz-pub")
        subscribe(new, "c32/fz", 1)
    finally:
        thaw(pids)
    got = old.expect_closed(30)
    assert [type(p).__name__ for p in got] == ["Disconnect"] and got[0].reason_code == 0x9C, got
    assert publish(pub, "c32/fz", b"after", 1) == 0
    assert [p.payload for p in receive(new, 1)] == [b"after"]  # the one live session
    assert owner(cluster, "frozen-1") == "s1"
    wait_nodes(cluster.nodes, NAMES)
    wait_for(lambda: "cluster lease held: accepting clients" in s2.log().rsplit("cluster lease lost", 1)[-1],
             30, 0.1, "s2 to serve again")
    back = clients.connect(port(cluster, "s2"), "frozen-2")
    assert back.barrier() == []
    assert "connect refused: client id not owned here" not in s2.log().rsplit("cluster lease held", 1)[-1]


def test_sigterm_drains_sessions_to_other_nodes(cluster, clients):
    """SIGTERM to s2: its clients get DISCONNECT 0x8B, its persistent session (with a QoS 1
    message unacknowledged) goes to another node, which owns the id in etcd and queues
    what is published meanwhile; the client reconnecting on s3 finds it all."""
    c, _ = persistent(clients, cluster, "s2", "drainee", clean_start=True)
    subscribe(c, "c32/dr/#", 1)
    pub = clients.connect(port(cluster, "s1"), "dr-pub")
    assert publish(pub, "c32/dr/0", b"m0", 1) == 0
    assert c.expect(Publish, 20).payload == b"m0"  # not acknowledged
    s2 = cluster.nodes[1]
    mark = s2._log_size()
    s2.stop()
    got = c.expect_closed(20)
    assert any(isinstance(p, Disconnect) and p.reason_code == 0x8B for p in got), got
    handed = re.findall(r"process=agent event='sessions handed to other nodes' member=w1 sessions=(\d+) adopted=(\d+)",
                        s2.log(since=mark))
    # (s2 also holds stale copies, e.g. frozen-1's, now owned elsewhere: nobody adopts those)
    assert handed and int(handed[0][1]) >= 1, handed
    wait_nodes([cluster.nodes[0], cluster.nodes[2]], {"s1", "s3"})
    assert owner(cluster, "drainee") in ("s1", "s3")
    for i in (1, 2):
        assert publish(pub, f"c32/dr/{i}", f"m{i}".encode(), 1, pid=1 + i) == 0
    c3, ack = persistent(clients, cluster, "s3", "drainee")
    assert ack.session_present
    got = receive(c3, 3)
    assert [p.payload for p in got] == [b"m0", b"m1", b"m2"] and got[0].dup
    c3.close()
    s2.start(60)
    wait_nodes(cluster.nodes, NAMES)


def test_dead_node_ids_connect_elsewhere_fenced_copy(cluster, clients):
    """s3 is SIGKILLed holding a persistent session: once its lease expired the id
    connects on s1 afresh (session present = 0). s3 comes back with the old copy in its
    store: a CONNECT there gets the session s1 made (present = 1, its subscription), never
    the stale copy (whose subscription receives nothing)."""
    cid = "orphan"
    leader = cluster.etcd.ctl("get", "--print-value-only", "leader").stdout.strip()
    assert leader != "s3"  # (s3 joined last)
    wsub = clients.connect(port(cluster, "s1"), "dead-will-sub")
    subscribe(wsub, "c32/dw/#", 1)
    c, _ = persistent(clients, cluster, "s3", cid, clean_start=True)
    subscribe(c, "c32/stale", 1)
    c.close()
    assert owner(cluster, cid) == "s3"
    with_will(clients, cluster, "s3", "dw-0", "c32/dw/0", 0)
    with_will(clients, cluster, "s3", "dw-2", "c32/dw/2", 2)
    s3 = cluster.nodes[2]
    s3.kill()
    wait_for(lambda: owner(cluster, cid) is None, 30, 0.1, "the record to go with s3's lease")
    # the wills of s3's clients: once each, published by the leader
    assert sorted(p.payload for p in receive(wsub, 2, timeout=30)) == [b"will-dw-0", b"will-dw-2"]
    assert cluster.etcd.keys("wills/dw-") == []
    wait_for(lambda: "fired by the leader" in cluster.nodes[int(leader[1:]) - 1].log(), 20,
             what="the leader logging the wills it fired")
    wait_nodes(cluster.nodes[:2], {"s1", "s2"})
    c1, ack = persistent(clients, cluster, "s1", cid)
    assert not ack.session_present
    subscribe(c1, "c32/fresh", 1)
    c1.close()
    s3.start(60)
    wait_nodes(cluster.nodes, NAMES)
    # back with both sessions (and wills) in its store: it publishes neither again
    wait_for(lambda: s3.log().count("will not published: fired or cleared elsewhere") >= 2, 30, 0.1,
             "s3 to settle its restored wills")
    sentinel = clients.connect(port(cluster, "s2"), "dw-sentinel")
    assert publish(sentinel, "c32/dw/sentinel", b"sentinel", 1) == 0
    assert [p.payload for p in receive(wsub, 1)] == [b"sentinel"]
    c3, ack = persistent(clients, cluster, "s3", cid)
    assert ack.session_present
    pub = clients.connect(port(cluster, "s2"), "orphan-pub")
    assert publish(pub, "c32/stale", b"stale", 1) == 0
    assert publish(pub, "c32/fresh", b"fresh", 1, pid=2) == 0
    assert [p.payload for p in receive(c3, 1)] == [b"fresh"]
    c3.close()


def test_leader_dies_another_takes_over_and_fires_its_wills(cluster, clients):
    """The leader's node is SIGKILLed with a client whose will has a delay: another node
    becomes leader (named in $SYS) once the lease expired, and publishes that will once."""
    leader = cluster.etcd.ctl("get", "--print-value-only", "leader").stdout.strip()
    others = sorted(NAMES - {leader})
    wsub = clients.connect(port(cluster, others[0]), "lw-sub")
    subscribe(wsub, "c32/lw/#", 1)
    subscribe(wsub, "$SYS/broker/cluster/leader", 0, pid=2)
    assert wsub.expect(Publish, 20).payload == leader.encode()
    with_will(clients, cluster, leader, "lw-1", "c32/lw/1", 1)
    dead = cluster.nodes[int(leader[1:]) - 1]
    dead.kill()
    got = receive(wsub, 2, timeout=40)
    assert [p.topic for p in got] == ["$SYS/broker/cluster/leader", "c32/lw/1"]
    assert got[0].payload.decode() in others and got[1].payload == b"will-lw-1"
    dead.start(60)
    wait_nodes(cluster.nodes, NAMES)
