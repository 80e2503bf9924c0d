"""A restarted agent checks the sessions its router holds against their owner records
(issue 11): the chaos run's twin, an agent killed in the middle of a takeover.

Its own module-scoped cluster of two one-worker nodes with a long lease
(SHOAL_CLUSTER_LEASE_TTL=20), so that the agent comes back under the lease it held
however long its restart takes on a loaded host: with a lapse the lease's fence closes
the client instead, and the check would not be what the test sees.
"""
from __future__ import annotations

import uuid

import pytest

from mqtt import Connack, Disconnect, Prop
from tests.support.cluster import running_cluster, subscribe

EXPIRY = {Prop.SESSION_EXPIRY_INTERVAL: 300}


@pytest.fixture(scope="module")
def cluster():
    with running_cluster(["r1", "r2"], cluster_lease_ttl=20, cluster_lease_loss="disconnect") as c:
        yield c


def test_a_restarted_agent_drops_a_session_another_node_took_meanwhile(cluster, clients):
    """The chaos run's twin: r1's agent is killed in the middle of a takeover, and another
    node's claim goes on without r1 (r1 could not answer; the record names that node now),
    while r1's router still holds the session r1's agent had granted, its client live.
    The agent comes back quickly under the same lease, so no fence says anything; the new
    agent checks every id its router holds against its owner record, and r1 drops the copy
    another node owns (v5: DISCONNECT 0x8E), without its will. Here the state the race left
    is made by hand: the record is written over to name r2 while r1's agent is stopped."""
    import json
    import os
    import re
    import signal

    from mqtt import Will
    from tests.support.node import wait_for

    cid = f"notours-{uuid.uuid4().hex[:6]}"
    r1 = cluster.nodes[0]
    watcher = clients.connect(cluster.nodes[1].port, f"{cid}-w")
    subscribe(watcher, "c33/notours/will", 1)
    c = clients.open(r1.port, 5)
    c.timeout = 30
    ack = c.connect(cid, clean_start=True, properties=dict(EXPIRY), will=Will("c33/notours/will", b"gone", 1))
    assert isinstance(ack, Connack) and ack.reason_code == 0, ack
    assert cluster.etcd.get_json(f"sessions/owners/{cid}")["node"] == "r1"
    leases = re.findall(r"event='lease held: serving' lease=(\d+)", r1.log())
    node2 = json.loads(cluster.etcd.ctl("get", "-w", "json", "nodes/r2").stdout)["kvs"][0]
    record = json.dumps({"lease": node2["lease"], "node": "r2"}, separators=(",", ":"), sort_keys=True)
    agent = r1.agent_pid()
    os.kill(agent, signal.SIGSTOP)
    try:
        cluster.etcd.ctl("put", f"--lease={node2['lease']:x}", f"sessions/owners/{cid}", record)
    finally:
        os.kill(agent, signal.SIGKILL)
        os.kill(agent, signal.SIGCONT)
    wait_for(lambda: (p := r1.agent_pid()) is not None and p != agent, 60, 0.1, "r1's agent to be restarted")
    got = c.expect_closed(30)
    assert any(isinstance(p, Disconnect) and p.reason_code == 0x8E for p in got), got
    # it came back under the lease it held (else the lease's fence closed the client, not this check)
    wait_for(lambda: len(re.findall(r"event='lease held: serving' lease=(\d+)", r1.log())) > len(leases), 30, 0.1,
             "the new agent to hold its lease")
    assert re.findall(r"event='lease held: serving' lease=(\d+)", r1.log())[-1] == leases[-1]
    # (the agent's log line goes through circus to the node's log: it may land after the DISCONNECT)
    wait_for(lambda: "a session here is owned by another node: dropping it" in r1.log(), 30, 0.1,
             "r1's agent to log the session it dropped")
    assert cluster.etcd.get_json(f"sessions/owners/{cid}")["node"] == "r2"  # r1 did not touch it
    assert watcher.barrier() == []  # no will: the session is r2's now



def test_a_takeover_racing_an_agent_restart_gets_the_session(cluster, clients):
    """r1's agent dies while r1 holds a live session; r2's CONNECT of the id comes as the
    agent restarts. Whether r2's TakeoverSession finds the old agent gone (refused 0x88, never
    two live sessions, and then a second CONNECT) or the new one, r2 ends with the session
    (session present) and r1's client gets 0x8E. The new agent's check of the ids its router
    holds sees r2's record (r2 swaps it in before it asks) and must not drop the session that
    r2 is asking for: it waits for a takeover's deadline first. (Before, the check dropped it
    at once and r2 started afresh: session present 0.) The takeover call waits for a channel
    still backing off from the agent's last life (wait_for_ready), so r2 reaches the new agent
    as soon as it serves."""
    import os
    import signal

    cid = f"race-{uuid.uuid4().hex[:6]}"
    r1, r2 = cluster.nodes
    c = clients.open(r1.port, 5)
    c.timeout = 30
    ack = c.connect(cid, clean_start=True, properties=dict(EXPIRY))
    assert isinstance(ack, Connack) and ack.reason_code == 0, ack
    os.kill(r1.agent_pid(), signal.SIGKILL)
    for _ in range(10):
        c2 = clients.open(r2.port, 5)
        c2.timeout = 30
        ack = c2.connect(cid, clean_start=False, properties=dict(EXPIRY))
        assert isinstance(ack, Connack) and ack.reason_code in (0, 0x88), ack
        if ack.reason_code == 0:
            break
        c2.close()  # refused while r1's agent is away: the client tries again
    assert ack.reason_code == 0 and ack.session_present, ack
    got = c.expect_closed(30)
    assert any(isinstance(p, Disconnect) and p.reason_code == 0x8E for p in got), got


@pytest.fixture(scope="module")
def short_cluster():
    """Two nodes with a 3 s lease, for the test whose agent stays away past its lease."""
    with running_cluster(["q1", "q2"], cluster_lease_ttl=3, cluster_lease_loss="disconnect") as c:
        yield c


def test_an_agent_back_on_a_new_lease_never_hands_over_what_it_held(short_cluster, clients):
    """q1's agent is stopped past its lease (the lease expires: etcd deletes the owner record
    of the offline session q1's router holds) and then killed; circus starts a new agent,
    which finds that lease gone and takes a new one. The copy in q1's router was written
    under the lapsed lease (another node may have owned and ended the id meanwhile): a
    TakeoverSession for it gets NONE (the asker starts afresh), and a CONNECT on q1 does
    not resume it. Before, the marks of such copies ("stale") lived only in the agent that
    held the lease: the new agent took the copy off its router and handed it over."""
    import json
    import os
    import re
    import signal

    import grpc

    from proto import cluster_pb2 as pb
    from proto import cluster_pb2_grpc as pbg
    from tests.support.node import wait_for

    cluster = short_cluster
    cid = f"lapsed-{uuid.uuid4().hex[:6]}"
    q1 = cluster.nodes[0]
    c = clients.open(q1.port, 5)
    ack = c.connect(cid, clean_start=True, properties=dict(EXPIRY))
    assert isinstance(ack, Connack) and ack.reason_code == 0, ack
    subscribe(c, "c33/lapsed/#", 1)
    c.send(Disconnect())  # (an offline session, held by q1's router)
    c.expect_closed(30)
    rec = json.loads(cluster.etcd.ctl("get", "-w", "json", f"sessions/owners/{cid}").stdout)["kvs"][0]
    leases = re.findall(r"event='lease held: serving' lease=(\d+)", q1.log())
    agent = q1.agent_pid()
    os.kill(agent, signal.SIGSTOP)
    try:
        wait_for(lambda: cluster.etcd.ctl("get", "--print-value-only", f"sessions/owners/{cid}").stdout.strip() == "",
                 60, 0.1, "q1's lease to expire (its owner record deleted with it)")
    finally:
        os.kill(agent, signal.SIGKILL)
        os.kill(agent, signal.SIGCONT)
    wait_for(lambda: (p := q1.agent_pid()) is not None and p != agent, 60, 0.1, "q1's agent to be restarted")
    wait_for(lambda: "sessions here were written under a lease this node lost" in q1.log(), 60, 0.1,
             "the new agent's check of the sessions q1's router holds")
    assert re.findall(r"event='lease held: serving' lease=(\d+)", q1.log())[-1] != leases[-1]  # a new lease
    with grpc.insecure_channel(q1.env["SHOAL_CLUSTER_ADDR"]) as ch:
        reply = pbg.PeerStub(ch).TakeoverSession(
            pb.TakeoverRequest(client_id=cid, clean_start=False, node="q2", token=int(rec["mod_revision"]) + 1000),
            timeout=20)
    assert reply.result == pb.TakeoverReply.NONE, reply
    c2 = clients.open(q1.port, 5)
    c2.timeout = 30
    ack = c2.connect(cid, clean_start=False, properties=dict(EXPIRY))
    assert isinstance(ack, Connack) and ack.reason_code == 0 and not ack.session_present, ack
