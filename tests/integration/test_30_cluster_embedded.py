"""`make cluster` (python -m cluster.local): three nodes with embedded etcd members
(SHOAL_ETCD_INITIAL_CLUSTER), started by one command, stopped by Ctrl-C; and every
process of a node ends when its circusd ends, however it ends."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from tests.support.cluster import free_ports_for_local_cluster, publish, receive, subscribe
from common.proc import children, cmdline
from tests.support.node import ROOT, wait_for
from tests.support.raw import Closed, connect


def _environ(pid: int) -> dict:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = f.read().decode(errors="replace").split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return not f.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return False


@pytest.fixture(scope="module")
def local():
    ports = free_ports_for_local_cluster(3)
    data = tempfile.mkdtemp(prefix="shoal-local", dir="/tmp")
    run = tempfile.mkdtemp(prefix="shoal-run", dir="/tmp")
    log = open(os.path.join(data, "cluster.log"), "ab")
    env = dict(os.environ, SHOAL_WORKERS="1", SHOAL_RUN_DIR=run, SHOAL_CLUSTER_LEASE_TTL="3")
    proc = subprocess.Popen([sys.executable, "-m", "cluster.local", "--ports", ",".join(map(str, ports)), "--data", data],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def text():
        with open(os.path.join(data, "cluster.log"), "rb") as f:
            return f.read().decode(errors="replace")

    try:
        wait_for(lambda: (text().count("event='joined the cluster'") >= 3
                          and text().count("process=agent event='registered with the router'") >= 3
                          and text().count("worker=1 event='registered with the router'") >= 3) or proc.poll() is not None,
                 90, 0.1, "three nodes joined")
        assert proc.poll() is None, text()[-5000:]
        yield {"ports": ports, "data": data, "proc": proc, "text": text}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()
        # three etcd members' preallocated WALs (about 250 MB a run): the log stays
        for p in ports:
            shutil.rmtree(os.path.join(data, str(p)), ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)


def test_three_embedded_nodes_route(local):
    p1, p2, p3 = local["ports"]
    sub = connect(p3, "emb-sub")
    pub = connect(p1, "emb-pub")
    try:
        subscribe(sub, "c31/#", 2)
        for qos in (0, 1, 2):
            publish(pub, f"c31/{qos}", b"q%d" % qos, qos, pid=qos + 1)
        assert [(p.payload, p.qos) for p in receive(sub, 3)] == [(b"q0", 0), (b"q1", 1), (b"q2", 2)]
    finally:
        sub.close()
        pub.close()
    for p in local["ports"]:
        assert os.path.isdir(os.path.join(local["data"], str(p), "etcd", "member"))


def test_processes_end_with_circusd(local):
    """circusd of node 3 killed with SIGKILL: every process it started (router, worker,
    agent, etcd member) dies with it (PR_SET_PDEATHSIG); the other two nodes go on
    (two of three etcd members are a quorum)."""
    circusds = [pid for pid in children(local["proc"].pid) if "circusd" in cmdline(pid)]
    assert len(circusds) == 3
    victim = next(pid for pid in circusds if _environ(pid).get("SHOAL_PORT") == str(local["ports"][2]))
    kids = {pid: cmdline(pid) for pid in children(victim)}
    assert sum("-m cluster" in cmd or "etcdbin/etcd" in cmd for cmd in kids.values()) == 2, kids  # agent, etcd member
    assert len(kids) == 4, kids  # and the router and the worker
    os.kill(victim, signal.SIGKILL)
    for pid in kids:
        wait_for(lambda: not _alive(pid), 20, 0.05, f"{kids[pid]} gone")
    p1, p2, _ = local["ports"]

    def accepted(port: int, cid: str):
        """A client id needs its owner record in etcd (issue 11): while the two members left
        elect a new etcd leader (the dead one may have led), a CONNECT is refused with 3."""
        try:
            return connect(port, cid)
        except AssertionError as e:
            assert "reason_code=3" in str(e), e
            return None

    rounds = iter(range(1, 1000))

    def round_trip() -> bool:
        """node 1 -> node 2. While the election lasts the nodes may also lose their leases and
        fence themselves (0x9C to connected clients, issue 11): that round is tried again."""
        n = next(rounds)
        sub = wait_for(lambda: accepted(p2, f"emb-after-{n}"), 30, 0.2, "node 2 accepting clients")
        pub = None
        try:
            pub = wait_for(lambda: accepted(p1, f"emb-after-pub-{n}"), 30, 0.2, "node 1 accepting clients")
            subscribe(sub, f"c31/after/{n}", 1)
            publish(pub, f"c31/after/{n}", b"still", 1, timeout=60)
            return [p.payload for p in receive(sub, 1)] == [b"still"]
        except (ConnectionError, OSError, Closed) as e:
            print(f"round {n}: {e!r}; again")
            return False
        except AssertionError as e:
            if "Disconnect(" not in str(e):  # anything but the fence's DISCONNECT is a failure
                raise
            print(f"round {n}: {e}; again")
            return False
        finally:
            sub.close()
            if pub is not None:
                pub.close()

    wait_for(round_trip, 120, 0.5, "a round trip node 1 -> node 2 after node 3 died")


def test_ctrl_c_stops_everything(local):
    proc = local["proc"]
    everything = []
    for c in children(proc.pid):
        everything.append(c)
        everything += children(c)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert proc.wait(60) == 0
    for pid in everything:
        wait_for(lambda: not _alive(pid), 20, 0.05, f"pid {pid} gone")
    assert "shoal cluster: stopped" in local["text"]()


def test_wrong_initial_cluster_says_what_to_fix(clients):
    """A node missing from SHOAL_ETCD_INITIAL_CLUSTER: its etcd member refuses with a
    message naming the fix; the node still serves its local clients."""
    from tests.support.node import Node

    n = Node(workers=1, node_name="lost", etcd_initial_cluster="other=http://127.0.0.1:9", wait_join=False)
    try:
        n.start(60)
        wait_for(lambda: "cannot start: SHOAL_ETCD_INITIAL_CLUSTER names ['other'] but this node is "
                         "SHOAL_NODE_NAME='lost'" in n.log(), 30, 0.1, "the etcd member's refusal")
        c = clients.connect(n.port, "lost-c")
        subscribe(c, "c31/lost", 1)
        publish(clients.connect(n.port, "lost-p"), "c31/lost", b"local", 1)
        assert [p.payload for p in receive(c, 1)] == [b"local"]
    finally:
        n.stop()
