"""Durable sessions, part 2 (issue 5): what survives a graceful restart, a SIGKILL
of a worker and of the whole node, golden and refused stores, limits in the
store, a full disk and the three sync policies.

Each test restarts a node, so the tests share few nodes; client ids and topics
carry the test's name."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import plyvel
import pytest

from mqtt import (
    Connack,
    Disconnect,
    Prop,
    PubAck,
    PubComp,
    PubRec,
    PubRel,
    Publish,
    ReasonCode,
    Subscription,
    Will,
)
from tests.support.clients import publish, receive, subscribe
from tests.support.node import ROOT, VENV_BIN, Node, wait_for

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
PROPS = {
    Prop.PAYLOAD_FORMAT_INDICATOR: 1,
    Prop.CONTENT_TYPE: "text/plain",
    Prop.RESPONSE_TOPIC: "t12/reply",
    Prop.CORRELATION_DATA: b"\x00\x01",
    Prop.USER_PROPERTY: [("a", "1"), ("a", "2")],
}


class TestNode(Node):
    """A node that can start under a command prefix (a tmpfs mount namespace), or
    start without waiting for readiness (a store it must refuse)."""

    __test__ = False

    def __init__(self, *a, prefix: tuple = (), **kw):
        super().__init__(*a, **kw)
        self.prefix = prefix

    def launch(self) -> None:
        self._log_mark = self._log_size()
        self._logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, str(VENV_BIN / "circusd"), "circus.ini"], cwd=ROOT, env=self.env,
            stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout: float = 30.0) -> "TestNode":
        self.launch()
        self.wait_ready(timeout)
        return self

    def restart(self, how: str) -> float:
        """graceful (SIGTERM), kill (SIGKILL of the node) or worker (SIGKILL of every
        worker; circus starts new ones). Returns the monotonic time the restart began."""
        t = time.monotonic()
        if how == "graceful":
            self.stop()
            self.start()
        elif how == "kill":
            self.kill()
            self.start()
        elif how == "worker":
            pids = self.worker_pids()
            self._log_mark = self._log_size()
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
            self.wait_ready()
        else:
            raise ValueError(how)
        return t

    def store_path(self, name: str = "worker-1") -> str:
        return os.path.join(self.data_dir, name)


# -- helpers ----------------------------------------------------------------------
def connect(clients, port, cid, version, *, expiry=3600, clean=False, will=None, **kw):
    c = clients.open(port, version)
    props = {Prop.SESSION_EXPIRY_INTERVAL: expiry} if version == 5 and expiry else {}
    ack = c.connect(cid, clean_start=clean, will=will, properties=props, **kw)
    assert isinstance(ack, Connack) and ack.reason_code == 0, ack
    return c, ack


def store_keys(path: str) -> list[bytes]:
    """Every key of a stopped node's store (opened the way an operator would)."""
    db = plyvel.DB(path)
    try:
        return list(db.iterator(include_value=False))
    finally:
        db.close()


def hashes(path: str, skip=()) -> dict[str, str]:
    return {n: hashlib.sha256(Path(path, n).read_bytes()).hexdigest() for n in sorted(os.listdir(path)) if n not in skip}


@pytest.fixture(scope="module")
def node():
    n = TestNode(workers=1)
    n.start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def node2():
    n = TestNode(workers=2)
    n.start()
    yield n
    n.stop()


def pick(request, workers):
    return request.getfixturevalue("node" if workers == 1 else "node2")


# -- sessions, subscriptions and queues -------------------------------------------------
@pytest.mark.parametrize("workers, how", [(1, "graceful"), (1, "kill"), (2, "kill")], ids=["1w-graceful", "1w-kill", "2w-kill"])
def test_sessions_keep_subscription_options_ids_and_queue_order(request, clients, workers, how):
    n = pick(request, workers)
    t = f"t12/sess/{workers}{how}"
    v5, _ = connect(clients, n.port, f"t12-sess5-{workers}{how}", 5)
    subscribe(v5, Subscription(f"{t}/a/#", 2, no_local=True, retain_as_published=True), sub_id=7, pid=1)
    subscribe(v5, (f"{t}/b/+", 1), sub_id=9, pid=2)
    v5.send(Disconnect())
    v4, _ = connect(clients, n.port, f"t12-sess4-{workers}{how}", 4)
    subscribe(v4, (f"{t}/a/#", 1), pid=1)
    v4.close()
    pub, _ = connect(clients, n.port, f"t12-sess-pub-{workers}{how}", 5, expiry=0, clean=True)
    sent = [("a/1", 1, False), ("b/1", 1, False), ("a/2", 2, False), ("a/r", 2, True), ("b/2", 2, False), ("a/3", 1, False)]
    for i, (sub, qos, retain) in enumerate(sent):
        publish(pub, f"{t}/{sub}", f"m{i}".encode(), qos, i + 1, retain)
    pub.close()
    n.restart(how)

    v5, ack = connect(clients, n.port, f"t12-sess5-{workers}{how}", 5)
    assert ack.session_present
    got = receive(v5, len(sent))
    assert [(p.topic, p.payload) for p in got] == [(f"{t}/{s}", f"m{i}".encode()) for i, (s, _, _) in enumerate(sent)]
    assert [p.qos for p in got] == [1, 1, 2, 2, 1, 1]  # granted QoS: 2 on a/#, 1 on b/+
    assert [p.properties.get(Prop.SUBSCRIPTION_IDENTIFIER) for p in got] == [[7], [9], [7], [7], [9], [7]]
    assert [p.retain for p in got] == [False, False, False, True, False, False]  # retain as published
    assert v5.barrier() == []
    v4, ack = connect(clients, n.port, f"t12-sess4-{workers}{how}", 4)
    assert ack.session_present
    got = receive(v4, 4)
    assert [p.payload for p in got] == [b"m0", b"m2", b"m3", b"m5"]
    assert [p.retain for p in got] == [False] * 4
    # the subscriptions still work, with their options: no local for the v5 session
    publish(v5, f"{t}/a/own", b"own", 1, 100)
    assert v5.barrier() == []
    (p,) = receive(v4, 1)
    assert p.payload == b"own"
    assert v4.barrier() == []


# -- inflight in both directions -----------------------------------------------------------
@pytest.mark.parametrize("workers, how", [(1, "kill"), (1, "worker"), (2, "kill")], ids=["1w-node", "1w-worker", "2w-node"])
def test_inflight_in_both_directions_survives_sigkill(request, clients, workers, how):
    n = pick(request, workers)
    flows = {}
    for v in (4, 5):
        t = f"t12/inf/{workers}{how}/{v}"
        sub, _ = connect(clients, n.port, f"t12-inf-sub-{workers}{how}-{v}", v)
        subscribe(sub, (f"{t}/#", 2), pid=1)
        pub, _ = connect(clients, n.port, f"t12-inf-pub-{workers}{how}-{v}", v)
        # incoming QoS 2, PUBREC'd by the broker; the publisher has not sent PUBREL
        pub.send(Publish(f"{t}/a", b"a", 2, packet_id=10))
        assert pub.expect(PubRec).packet_id == 10
        a = sub.expect(Publish)
        sub.send(PubRec(a.packet_id))  # outgoing QoS 2 in PUBREL state: no PUBCOMP before the kill
        assert sub.expect(PubRel).packet_id == a.packet_id
        pub.send(Publish(f"{t}/b", b"b", 2, packet_id=11))
        assert pub.expect(PubRec).packet_id == 11
        b = sub.expect(Publish)  # outgoing QoS 2, not acknowledged at all
        pub.send(Publish(f"{t}/c", b"c", 1, packet_id=12))
        assert pub.expect(PubAck).packet_id == 12
        c = sub.expect(Publish)  # outgoing QoS 1, not acknowledged
        assert sub.barrier() == [] and pub.barrier() == []
        flows[v] = (t, a.packet_id, b.packet_id, c.packet_id)
    n.restart(how)

    for v, (t, a_pid, b_pid, c_pid) in flows.items():
        pub, ack = connect(clients, n.port, f"t12-inf-pub-{workers}{how}-{v}", v)
        assert ack.session_present
        # a publisher unsure of its PUBREC sends the PUBLISH again: acknowledged, not routed again
        pub.send(Publish(f"{t}/a", b"a", 2, dup=True, packet_id=10))
        rec = pub.expect(PubRec)
        assert (rec.packet_id, rec.reason_code) == (10, 0)
        for pid in (10, 11):
            pub.send(PubRel(pid))
            comp = pub.expect(PubComp)
            assert (comp.packet_id, comp.reason_code) == (pid, 0)  # the broker still knew the packet id
        sub, ack = connect(clients, n.port, f"t12-inf-sub-{workers}{how}-{v}", v)
        assert ack.session_present
        first = [sub.recv(), sub.recv(), sub.recv()]
        assert isinstance(first[0], PubRel) and first[0].packet_id == a_pid  # resumes with PUBREL
        assert [(p.topic, p.payload, p.qos, p.dup, p.packet_id) for p in first[1:]] == [
            (f"{t}/b", b"b", 2, True, b_pid), (f"{t}/c", b"c", 1, True, c_pid)]
        sub.send(PubComp(a_pid))
        sub.send(PubRec(b_pid))
        assert sub.expect(PubRel).packet_id == b_pid
        sub.send(PubComp(b_pid))
        sub.send(PubAck(c_pid))
        assert sub.barrier() == []  # "a" is not delivered a second time
        publish(pub, f"{t}/d", b"d", 2, 13)
        (d,) = receive(sub, 1)
        assert d.payload == b"d"
        assert sub.barrier() == []


def worker_of(n: Node, c) -> int | None:
    """The worker whose process holds the server end of c's TCP connection."""
    port = c.sock.getsockname()[1]
    inode = None
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == n.port and int(fields[2].rsplit(":", 1)[1], 16) == port:
                inode = fields[9]
    target = f"socket:[{inode}]"
    for wid, pid in n.worker_pids().items():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return wid
        except OSError:
            pass
    return None


def open_on(clients, n: Node, version: int, avoid: int | None = None) -> object:
    """A connection accepted by any worker but `avoid` (c.worker says which)."""
    for _ in range(100):
        c = clients.open(n.port, version)
        w = wait_for(lambda: worker_of(n, c), 5, 0.01, "the accepting worker")
        if w != avoid:
            c.worker = w
            return c
        c.close()
    raise AssertionError(f"every connection landed on worker {avoid}")


def test_a_session_handed_to_another_worker_keeps_its_queue_over_sigkill(node2, clients):
    n, t = node2, "t12/hand"
    first = open_on(clients, n, 5)
    props = {Prop.SESSION_EXPIRY_INTERVAL: 3600, Prop.RECEIVE_MAXIMUM: 1}
    assert first.connect("t12-hand", clean_start=False, properties=props).reason_code == 0
    subscribe(first, (f"{t}/#", 1), pid=1)
    first.send(Disconnect())
    pub, _ = connect(clients, n.port, "t12-hand-pub", 5, expiry=0, clean=True)
    for i in range(4):
        publish(pub, f"{t}/x", f"m{i}".encode(), 1, i + 1)
    n.restart("kill")
    # back on the other worker: the session moves there, one message in flight, three queued
    moved = open_on(clients, n, 5, avoid=first.worker)
    ack = moved.connect("t12-hand", clean_start=False, properties=props)
    assert ack.session_present
    p = moved.expect(Publish)
    assert p.payload == b"m0"
    assert moved.barrier() == []
    n.restart("kill")
    c, ack = connect(clients, n.port, "t12-hand", 5)
    assert ack.session_present
    got = receive(c, 4)
    assert [p.payload for p in got] == [b"m0", b"m1", b"m2", b"m3"]
    assert got[0].dup
    assert c.barrier() == []


# -- wills ----------------------------------------------------------------------------------
def will(topic, payload, delay=None, qos=1):
    return Will(topic, payload, qos, False, {Prop.WILL_DELAY_INTERVAL: delay} if delay is not None else {})


def test_will_delay_survives_sigkill(node, clients):
    n, t = node, "t12/will/kill"
    sub, _ = connect(clients, n.port, "t12-will-kill-sub", 5)
    subscribe(sub, (f"{t}/#", 1), pid=1)
    connect(clients, n.port, "t12-will-kill-w1", 5, will=will(f"{t}/w1", b"w1", 2))
    connect(clients, n.port, "t12-will-kill-w2", 5, will=will(f"{t}/w2", b"w2", 2))
    connect(clients, n.port, "t12-will-kill-w3", 5, will=will(f"{t}/w3", b"w3", 3))  # the sentinel
    connect(clients, n.port, "t12-will-kill-w4", 4, will=will(f"{t}/w4", b"w4"))
    assert sub.barrier() == []
    t_restart = n.restart("kill")
    # w2 comes back within its delay: its will is not published
    _, ack = connect(clients, n.port, "t12-will-kill-w2", 5)
    assert ack.session_present
    sub, _ = connect(clients, n.port, "t12-will-kill-sub", 5)
    got, at = [], {}
    for p in receive(sub, 3, timeout=10):
        got.append(p.payload)
        at[p.payload] = time.monotonic()
    # w4 (3.1.1: no delay) at the first tick, w1 after its 2 s, then the sentinel w3 at 3 s
    assert got == [b"w4", b"w1", b"w3"]
    assert at[b"w1"] - t_restart >= 2.0  # the delay counts again from the restart
    assert sub.barrier() == []


def test_will_delay_survives_graceful_restart(node, clients):
    n, t = node, "t12/will/graceful"
    sub, _ = connect(clients, n.port, "t12-will-gr-sub", 5)
    subscribe(sub, (f"{t}/#", 1), pid=1)
    connect(clients, n.port, "t12-will-gr-w1", 5, will=will(f"{t}/w1", b"w1", 6))
    connect(clients, n.port, "t12-will-gr-w2", 5, will=will(f"{t}/w2", b"w2", 6))
    connect(clients, n.port, "t12-will-gr-w3", 5, will=will(f"{t}/w3", b"w3", 7))  # the sentinel
    connect(clients, n.port, "t12-will-gr-w4", 4, will=will(f"{t}/w4", b"w4"))
    assert sub.barrier() == []
    t_stop = n.restart("graceful")
    _, ack = connect(clients, n.port, "t12-will-gr-w2", 5)
    assert ack.session_present
    sub, _ = connect(clients, n.port, "t12-will-gr-sub", 5)
    got, at = [], {}
    for p in receive(sub, 3, timeout=15):
        got.append(p.payload)
        at[p.payload] = time.monotonic()
    # the server closed w4's connection: its will went out at once (queued for us over the
    # restart); w1's delay runs from its disconnection, and w2 came back in time
    assert got == [b"w4", b"w1", b"w3"]
    assert at[b"w1"] - t_stop >= 6.0
    assert sub.barrier() == []


def test_session_expired_while_the_node_was_down_ends_at_start_with_its_will(node, clients):
    n, t = node, "t12/expired"
    sub, _ = connect(clients, n.port, "t12-exp-sub", 5)
    subscribe(sub, (f"{t}/#", 1), pid=1)
    e, _ = connect(clients, n.port, "t12-exp-e", 5, expiry=3, will=will(f"{t}/e", b"e gone", 600))
    e.close()  # without DISCONNECT: the session expires in 3 s, before its will delay
    deadline = time.time() + 3
    assert sub.barrier() == [] and sub.barrier() == []  # the worker has seen the close
    n.kill()
    wait_for(lambda: time.time() > deadline + 0.2, 10, 0.05, "the session's expiry to pass")
    n.start()
    assert re.search(r"restored from store.*expired=1\b", n.log(n._log_mark))
    e, ack = connect(clients, n.port, "t12-exp-e", 5)
    assert not ack.session_present
    sub, ack = connect(clients, n.port, "t12-exp-sub", 5)
    assert ack.session_present
    (p,) = receive(sub, 1)
    assert (p.topic, p.payload) == (f"{t}/e", b"e gone")
    assert sub.barrier() == []


# -- retained --------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2], ids=["1w", "2w"])
@pytest.mark.parametrize("how", ["graceful", "kill"])
def test_retained_keep_properties_and_expiry(request, clients, workers, how):
    n = pick(request, workers)
    t = f"t12/ret/{workers}{how}"
    pub5, _ = connect(clients, n.port, f"t12-ret-pub5-{workers}{how}", 5, expiry=0, clean=True)
    pub4, _ = connect(clients, n.port, f"t12-ret-pub4-{workers}{how}", 4, expiry=0, clean=True)
    publish(pub5, f"{t}/props", b"props", 1, 1, True, {**PROPS, Prop.MESSAGE_EXPIRY_INTERVAL: 3600})
    publish(pub5, f"{t}/short", b"short", 2, 2, True, {Prop.MESSAGE_EXPIRY_INTERVAL: 1})
    publish(pub4, f"{t}/plain", b"plain", 1, 1, True)
    publish(pub4, f"{t}/gone", b"gone", 1, 2, True)
    publish(pub4, f"{t}/gone", b"", 1, 3, True)  # cleared
    t_pub = time.monotonic()
    n.restart(how)
    # expiry is checked against the clock of the worker's last tick (once a second)
    wait_for(lambda: time.monotonic() > t_pub + 2.2, 5, 0.05, "the short expiry to pass")
    for v in (5, 4):
        c, _ = connect(clients, n.port, f"t12-ret-sub{v}-{workers}{how}", v, expiry=0, clean=True)
        subscribe(c, (f"{t}/#", 1), pid=1)
        got = {p.topic: p for p in c.barrier()}
        assert set(got) == {f"{t}/props", f"{t}/plain"}
        assert all(p.retain for p in got.values())
        props = got[f"{t}/props"]
        if v == 5:
            left = props.properties.pop(Prop.MESSAGE_EXPIRY_INTERVAL)
            assert 3600 - (time.monotonic() - t_pub) - 1 <= left <= 3600
            assert props.properties == PROPS
        assert (props.payload, props.qos, got[f"{t}/plain"].payload) == (b"props", 1, b"plain")


# -- bad stores ------------------------------------------------------------------------------
def test_golden_format_1_store_is_served(clients):
    n = TestNode(workers=1)
    shutil.copytree(GOLDEN / "store-v1", n.store_path())
    n.start()
    try:
        assert re.search(r"restored from store.*sessions=3 expired=1 retained=2", n.log())
        v4, ack = connect(clients, n.port, "golden-v4", 4)
        assert ack.session_present
        assert [(p.topic, p.payload) for p in receive(v4, 2)] == [("golden/v4", b"for v4"), ("golden/will/expired", b"expired")]
        assert v4.barrier() == []
        v5, ack = connect(clients, n.port, "golden-v5", 5, expiry=0xFFFFFFFF)
        assert ack.session_present
        got = [v5.recv() for _ in range(6)]
        assert isinstance(got[1], PubRel) and got[1].packet_id == 2
        pubs = [got[0]] + got[2:]
        assert [(p.topic, p.payload, p.qos, p.dup, p.packet_id) for p in pubs[:2]] == [
            ("golden/a/0", b"zero", 2, True, 1), ("golden/b/y", b"qos1 inflight", 1, True, 3)]
        assert [(p.topic, p.payload, p.qos, p.retain) for p in pubs[2:]] == [
            ("golden/a/1", b"one", 1, False), ("golden/a/2", b"two", 2, True), ("golden/b/x", b"three", 1, False)]
        assert [p.properties.get(Prop.SUBSCRIPTION_IDENTIFIER) for p in pubs] == [[7], None, [7], [7], None]
        two = dict(pubs[3].properties)
        assert two.pop(Prop.MESSAGE_EXPIRY_INTERVAL) > 10 * 365 * 86400
        two.pop(Prop.SUBSCRIPTION_IDENTIFIER)
        assert two == {**PROPS, Prop.RESPONSE_TOPIC: "golden/reply"}
        v5.send(PubRel(10))
        assert v5.expect(PubComp).reason_code == 0  # the stored incoming QoS 2 packet id
        v5.send(PubRel(12))
        assert v5.expect(PubComp).reason_code == ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
        r, _ = connect(clients, n.port, "t12-golden-r", 5, expiry=0, clean=True)
        subscribe(r, ("golden/retained/#", 1), pid=1)
        got = {p.topic: p for p in r.barrier()}
        assert set(got) == {"golden/retained/plain", "golden/retained/props"}
    finally:
        n.stop()


@pytest.mark.parametrize("name, words", [
    ("store-corrupt", ["is corrupt", "python -m worker.store repair", "changed nothing"]),
    ("store-v99", ["has format 99", "newer Shoal", "changed nothing"]),
    ("locked", ["is locked by another process", "SHOAL_DATA_DIR"]),
])
def test_bad_store_refuses_to_start_and_is_left_untouched(name, words):
    n = TestNode(workers=1)
    path = n.store_path()
    shutil.copytree(GOLDEN / ("store-v1" if name == "locked" else name), path)
    holder = plyvel.DB(path) if name == "locked" else None
    # (reading LOCK here would drop the holder's lock: closing any descriptor of a
    # file releases the fcntl locks the process holds on it)
    skip = ("LOCK",) if holder is not None else ()
    before = hashes(path, skip)
    n.launch()
    try:
        try:
            line = wait_for(lambda: re.search(r"cannot start: (.*)", n.log()), 20, 0.05, "the refusal in the log")
        except TimeoutError:
            raise AssertionError(n.log()) from None
        text = line.group(1)
        assert path in text
        for w in words:
            assert w in text
        assert not re.search(r"event=serving", n.log())
    finally:
        n.stop()
    assert hashes(path, skip) == before
    if holder is not None:
        holder.close()


# -- nothing left behind -------------------------------------------------------------------------
def test_sessions_that_end_leave_nothing_in_the_store(clients):
    n = TestNode(workers=1)
    n.start()
    try:
        t = "t12/clean"
        pub, _ = connect(clients, n.port, "t12-clean-pub", 5, expiry=0, clean=True)
        # 3.1.1 clean session and v5 expiry 0, with QoS 1/2 in and out
        for cid, v in (("t12-clean-v4", 4), ("t12-clean-v5", 5)):
            c, _ = connect(clients, n.port, cid, v, expiry=0, clean=True)
            subscribe(c, (f"{t}/q", 2), pid=1)
            c.send(Publish(f"{t}/in", b"x", 2, packet_id=5))
            c.expect(PubRec)  # an incoming QoS 2 left open
        # persistent sessions with queued messages, ended three ways
        for cid in ("t12-clean-restart", "t12-clean-disconnect", "t12-clean-expire"):
            c, _ = connect(clients, n.port, cid, 5, expiry=1 if cid.endswith("expire") else 3600)
            subscribe(c, (f"{t}/#", 1), pid=1)
            c.send(Disconnect())
        publish(pub, f"{t}/q", b"queued", 1, 1, True)
        publish(pub, f"{t}/q", b"", 1, 2, True)  # the retained message cleared again
        c, ack = connect(clients, n.port, "t12-clean-restart", 5, expiry=0, clean=True)
        assert not ack.session_present
        c.send(Disconnect())
        c, ack = connect(clients, n.port, "t12-clean-disconnect", 5)
        assert ack.session_present
        c.send(Disconnect(0, {Prop.SESSION_EXPIRY_INTERVAL: 0}))
        wait_for(lambda: "client=t12-clean-expire" in n.log() and "session expired" in n.log(), 10, 0.05, "expiry")
    finally:
        n.stop()
    assert store_keys(n.store_path()) == [b"meta"]


# -- limits ------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2], ids=["1w", "2w"])
def test_queue_and_retained_limits_hold_in_the_store(clients, workers):
    n = TestNode(workers=workers, max_queued_messages=3, max_retained_messages=2)
    n.start()
    try:
        sub, _ = connect(clients, n.port, "t12-lim-sub", 5)
        subscribe(sub, ("t12/lim/q", 1), pid=1)
        sub.send(Disconnect())
        pub, _ = connect(clients, n.port, "t12-lim-pub", 5, expiry=0, clean=True)
        for i in range(5):
            publish(pub, "t12/lim/q", f"m{i}".encode(), 1, i + 1)
        for i in range(4):
            publish(pub, f"t12/lim/r/{i}", b"r", 1, 10 + i, True)
        pub.close()
        n.stop()
        stores = [n.store_path(f"worker-{w}") for w in range(1, workers + 1)]
        keys = [k for p in stores for k in store_keys(p)]
        assert len([k for k in keys if k.startswith(b"q/")]) == 3
        retained = store_keys(n.store_path("router" if workers > 1 else "worker-1"))
        assert [k for k in retained if k.startswith(b"r/")] == [b"r/t12/lim/r/0", b"r/t12/lim/r/1"]
        n.start()
        sub, ack = connect(clients, n.port, "t12-lim-sub", 5)
        assert ack.session_present
        assert [p.payload for p in receive(sub, 3)] == [b"m0", b"m1", b"m2"]
        assert sub.barrier() == []
        r, _ = connect(clients, n.port, "t12-lim-r", 5, expiry=0, clean=True)
        subscribe(r, ("t12/lim/r/#", 1), pid=1)
        assert sorted(p.topic for p in r.barrier()) == ["t12/lim/r/0", "t12/lim/r/1"]
    finally:
        n.stop()


# -- sync policies ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sync", ["always", "batch", "off"])
def test_every_sync_policy_keeps_acknowledged_messages_over_sigkill(clients, sync):
    n = TestNode(workers=1, sync=sync)
    n.start()
    try:
        for v in (4, 5):
            s, _ = connect(clients, n.port, f"t12-sync-sub-{v}", v)
            subscribe(s, (f"t12/sync/{v}", 2), pid=1)
            s.close()
        pub, _ = connect(clients, n.port, "t12-sync-pub", 5, expiry=0, clean=True)
        for i in range(10):
            for v in (4, 5):
                publish(pub, f"t12/sync/{v}", f"m{i}".encode(), 1 + i % 2, 1 + i * 2 + (v == 5))
        n.kill()  # straight after the last acknowledgement
        n.start()
        assert f"sync={sync}" in n.log(n._log_mark)
        for v in (4, 5):
            s, ack = connect(clients, n.port, f"t12-sync-sub-{v}", v)
            assert ack.session_present
            assert [p.payload for p in receive(s, 10)] == [f"m{i}".encode() for i in range(10)]
            assert s.barrier() == []
    finally:
        n.stop()


# -- a full disk -------------------------------------------------------------------------------------
def copied_keys(n: Node, disk: str) -> list[bytes]:
    """The keys of the worker's live store, read from a copy."""
    copy = os.path.join(n.tmp, "store-copy")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(os.path.join(disk, "worker-1"), copy, ignore=shutil.ignore_patterns("LOCK"))
    return store_keys(copy)


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_full_disk_refuses_qos_1_and_2_keeps_serving_and_recovers(clients):
    """The node runs in a mount namespace of its own with its data directory on a
    16 MB tmpfs; the test fills that disk through /proc/<pid>/root."""
    n = TestNode(workers=1, prefix=(
        "unshare", "--map-root-user", "--mount", "sh", "-c",
        'mount -t tmpfs -o size=16m shoal-full "$SHOAL_DATA_DIR" && exec "$0" "$@"'))
    os.makedirs(n.data_dir)
    n.start()
    try:
        disk = f"/proc/{n.proc.pid}/root{n.data_dir}"
        assert free_bytes(disk) <= 16 << 20 and os.path.isdir(os.path.join(disk, "worker-1"))
        pids = n.worker_pids()
        sub, _ = connect(clients, n.port, "t12-full-sub", 5)
        subscribe(sub, ("t12/full/q", 1), pid=1)
        sub.send(Disconnect())
        live, _ = connect(clients, n.port, "t12-full-live", 5, expiry=0, clean=True)
        subscribe(live, ("t12/full/live", 0), pid=1)
        pub, _ = connect(clients, n.port, "t12-full-pub", 5, expiry=0, clean=True)
        filler = os.path.join(disk, "filler")
        with open(filler, "wb") as f:  # leave about 1 MB
            f.write(b"\0" * max(0, free_bytes(disk) - (1 << 20)))
        acked, pid, refused = [], 0, None
        body = b"x" * 100_000
        while refused is None and pid < 100:
            pid += 1
            ack = publish(pub, "t12/full/q", b"%d:" % pid + body, 1, pid)
            if ack.reason_code == 0:
                acked.append(pid)
            else:
                refused = ack.reason_code
        assert refused == ReasonCode.QUOTA_EXCEEDED and acked
        wait_for(lambda: "store write failed" in n.log(), 5, 0.05, "the failure in the log")
        # while the disk is full: QoS 1 and 2 are refused, QoS 0 flows, the worker serves
        assert publish(pub, "t12/full/q", b"q1", 1, 200).reason_code == ReasonCode.QUOTA_EXCEEDED
        assert publish(pub, "t12/full/q", b"q2", 2, 201).reason_code == ReasonCode.QUOTA_EXCEEDED
        publish(pub, "t12/full/live", b"qos0 flows", 0)
        (p,) = live.barrier()
        assert p.payload == b"qos0 flows"
        v4, _ = connect(clients, n.port, "t12-full-v4", 4, expiry=0, clean=True)
        v4.send(Publish("t12/full/q", b"v4", 1, packet_id=1))
        assert v4.barrier() == []  # 3.1.1 has no refusal: no PUBACK, the client sends it again later
        other, _ = connect(clients, n.port, "t12-full-new", 5, expiry=0, clean=True)
        assert other.barrier() == []
        during, _ = connect(clients, n.port, "t12-full-during", 5)  # a session the store cannot take now
        subscribe(during, ("t12/full/during", 1), pid=1)
        during.send(Disconnect())
        assert b"s/t12-full-during" not in copied_keys(n, disk)
        assert n.worker_pids() == pids
        # room again: the store reopens and QoS 1 is accepted once more
        os.remove(filler)

        def accepted():
            nonlocal pid
            pid += 1
            return publish(pub, "t12/full/q", b"after", 1, pid).reason_code == 0
        wait_for(accepted, 10, 0.2, "QoS 1 accepted again")
        wait_for(lambda: "store writes again" in n.log(), 5, 0.05, "the recovery in the log")
        # what was dropped while the disk was full is written again
        assert b"s/t12-full-during" in copied_keys(n, disk)
        sub, ack = connect(clients, n.port, "t12-full-sub", 5)
        assert ack.session_present
        got = []
        while True:
            p = sub.recv()
            sub.send(PubAck(p.packet_id))
            got.append(p.payload)
            if p.payload == b"after":
                break
        nums = [int(g.split(b":")[0]) for g in got if b":" in g]
        assert set(acked) <= set(nums)  # every acknowledged message arrives
        assert n.worker_pids() == pids
    finally:
        n.stop()
