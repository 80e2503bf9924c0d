"""Operating a node: /metrics (Prometheus text), /health and /ready (curl),
shoalctl against a running node, kick, SHOAL_LOG_FORMAT=json.

Real nodes under circusd, real paho clients; the figures are read with
prometheus_client's own parser."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.parser import text_string_to_metric_families

from shoalctl.cli import UnixHTTPConnection
from tests.support.node import VENV_BIN, Node, free_port, wait_for


# -- helpers ---------------------------------------------------------------------------
def curl(node: Node, path: str, method: str = "GET", unix: bool = False, token: str | None = None) -> tuple[int, str]:
    cmd = ["curl", "-s", "-m", "20", "-X", method, "-o", "-", "-w", "\n%{http_code}"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if unix:
        cmd += ["--unix-socket", admin_socket(node), f"http://localhost{path}"]
    else:
        cmd += [f"http://127.0.0.1:{node.metrics_port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def admin_socket(node: Node) -> str:
    return os.path.join(node.tmp, f"shoal-{node.port}-admin.sock")


def api(node: Node, path: str, method: str = "GET") -> tuple[int, dict]:
    conn = UnixHTTPConnection(admin_socket(node), 20)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def listing(node: Node, what: str, client: str | None = None) -> list[dict]:
    """The rows of an admin list once every worker answered it."""
    path = f"/api/v1/{what}" + (f"?client={client}" if client else "")

    def complete():
        code, answer = api(node, path)
        return code == 200 and not answer["workers_missing"] and answer

    return wait_for(complete, 20, 0.1, f"every worker's {what}")[what]


def offline(node: Node, cid: str) -> bool:
    return [r["connected"] for r in listing(node, "sessions", cid)] == [False]


def scrape(node: Node) -> dict:
    """{(sample name, ((label, value), ...) without node): value} of one scrape."""
    code, text = curl(node, "/metrics")
    assert code == 200, text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            assert s.labels.get("node") == node.name
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "node"))
            out[(s.name, labels)] = s.value
    return out


def value(figs: dict, name: str, **labels) -> float:
    return figs[(name, tuple(sorted(labels.items())))]


def assert_sums(figs: dict, workers: int) -> None:
    """Every node figure is the sum of its per-worker series, and every worker has each."""
    per: dict = {}
    for (name, labels), v in figs.items():
        if name.startswith("shoal_worker_") and name != "shoal_worker_up":
            rest = tuple(kv for kv in labels if kv[0] != "worker")
            wid = dict(labels)["worker"]
            per.setdefault(("shoal_" + name[len("shoal_worker_"):], rest), {})[wid] = v
    assert per
    for key, by_worker in per.items():
        assert key in figs, key
        assert sorted(by_worker) == [str(w) for w in range(1, workers + 1)], (key, by_worker)
        assert figs[key] == pytest.approx(sum(by_worker.values())), (key, figs[key], by_worker)


class Client:
    """A paho client on its own network thread, with what it saw."""

    def __init__(self, port: int, cid: str, protocol=mqtt.MQTTv5, keepalive: int = 60, expiry: int = 0,
                 clean: bool = True):
        self.cid = cid
        kw = {} if protocol == mqtt.MQTTv5 else {"clean_session": clean}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol, **kw)
        self.messages: list = []
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.reason = None
        self.c.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, m.qos))

        def on_disconnect(c, u, flags, rc, props):
            self.reason = rc
            self.disconnected.set()

        self.c.on_disconnect = on_disconnect
        self.c.reconnect_delay_set(60, 120)  # a closed client stays closed while a test looks
        if protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            if expiry:
                props.SessionExpiryInterval = expiry
            self.c.connect("127.0.0.1", port, keepalive, clean_start=clean, properties=props)
        else:
            self.c.connect("127.0.0.1", port, keepalive)
        self.c.loop_start()
        assert self.connected.wait(20), f"{cid} did not connect"

    def subscribe(self, flt: str, qos: int) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(flt, qos)
        assert done.wait(20)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.c.publish(topic, payload, qos).wait_for_publish(20)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients():
    made: list[Client] = []

    def make(*a, **kw) -> Client:
        c = Client(*a, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass


class OpsNode(Node):
    """A node with a metrics port, ready once /ready says so (what a probe waits for)."""

    def __init__(self, workers: int, **settings):
        super().__init__(workers=workers, metrics_port=free_port(), **settings)
        self.metrics_port = int(self.env["SHOAL_METRICS_PORT"])
        self.name = f"ops-{self.port}"
        self.env["SHOAL_NODE_NAME"] = self.name

    def start(self, timeout: float = 30.0) -> "OpsNode":
        super().start(timeout)
        wait_for(lambda: curl(self, "/ready")[0] == 200, timeout, 0.05, "/ready 200")
        return self


ops_node = OpsNode


@pytest.fixture(scope="module")
def one():
    with ops_node(1) as node:
        yield node


@pytest.fixture(scope="module")
def two():
    with ops_node(2) as node:
        yield node


def shoalctl(node: Node, *args: str, tcp: bool = False, check: bool = True, drop=()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in node.env.items() if k not in drop}
    cmd = [str(VENV_BIN / "shoalctl")]
    if tcp:
        cmd += ["--url", f"http://127.0.0.1:{node.metrics_port}"]
    r = subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r


def rows(out: str) -> list[dict]:
    lines = out.strip().splitlines()
    head = lines[0].split()
    return [dict(zip(head, line.split())) for line in lines[1:]]


# -- /health, /ready -------------------------------------------------------------------------
def test_health_and_ready_answer_200_when_serving(one):
    for path in ("/health", "/ready"):
        code, body = curl(one, path)
        assert code == 200, body
        assert json.loads(body)["workers"] == {"1": True}
    code, body = curl(one, "/nope")
    assert code == 404
    out = subprocess.run(["curl", "-s", "-I", f"http://127.0.0.1:{one.metrics_port}/health"], capture_output=True,
                         text=True, timeout=30).stdout
    assert out.startswith("HTTP/1.1 200")  # HEAD, as some probes send


def test_health_and_ready_answer_503_while_a_worker_is_frozen():
    with ops_node(2) as node:
        pids = wait_for(lambda: len(node.worker_pids()) == 2 and node.worker_pids(), 20, what="two workers")
        os.kill(pids[2], signal.SIGSTOP)
        try:
            wait_for(lambda: curl(node, "/health")[0] == 503, 20, 0.2, "health 503")
            code, body = curl(node, "/ready")
            assert code == 503
            assert json.loads(body)["workers"] == {"1": True, "2": False}
            assert json.loads(curl(node, "/health")[1])["workers"] == {"1": True, "2": False}
        finally:
            os.kill(pids[2], signal.SIGCONT)
        wait_for(lambda: curl(node, "/health")[0] == 200, 20, 0.2, "health 200 again")
        wait_for(lambda: curl(node, "/ready")[0] == 200, 20, 0.2, "ready 200 again")


def test_health_and_ready_answer_503_while_a_worker_cannot_start():
    """The router serves, the worker exits on a bad ACL file (circus retries it):
    503 until the file is fixed and the worker serves, then 200."""
    d = tempfile.mkdtemp(prefix="shoal-ops", dir="/tmp")
    path = os.path.join(d, "acl")
    with open(path, "w") as f:
        f.write("topic readwrite ok/#\nfrobnicate\n")
    node = ops_node(1, acl_file=path)
    seen: list = []

    def fix_once_refused():
        try:
            wait_for(lambda: f"cannot start: {path}:2:" in node.log(), 30, what="the ACL error")
            wait_for(lambda: os.path.exists(admin_socket(node)), 30, what="the admin socket")
            seen.append(curl(node, "/health"))
            seen.append(curl(node, "/ready"))
        finally:
            with open(path, "w") as f:
                f.write("topic readwrite ok/#\n")

    fixer = threading.Thread(target=fix_once_refused)
    fixer.start()
    try:
        node.start(timeout=60)
    finally:
        fixer.join()
    try:
        assert [code for code, _ in seen] == [503, 503], seen
        assert json.loads(seen[0][1])["workers"] == {"1": False}
        assert curl(node, "/health")[0] == 200
    finally:
        node.stop()


# -- /metrics ------------------------------------------------------------------------------
def test_metrics_count_real_publishes_by_qos(one, clients):
    before = scrape(one)
    sub = clients(one.port, "m13-sub")
    sub.subscribe("m13/q/#", 2)
    pub = clients(one.port, "m13-pub", mqtt.MQTTv311)
    sent = {0: 3, 1: 4, 2: 5}
    for qos, n in sent.items():
        for i in range(n):
            pub.publish(f"m13/q/{qos}", b"x" * 10, qos)
    wait_for(lambda: len(sub.messages) == sum(sent.values()), 20, what="deliveries")

    def moved(figs):
        return all(value(figs, "shoal_publish_received_total", qos=str(q))
                   - value(before, "shoal_publish_received_total", qos=str(q)) == n for q, n in sent.items())

    figs = wait_for(lambda: (lambda f: moved(f) and f)(scrape(one)), 20, 0.2, "publish counts")
    for q, n in sent.items():
        assert value(figs, "shoal_publish_sent_total", qos=str(q)) - value(before, "shoal_publish_sent_total", qos=str(q)) == n
    assert value(figs, "shoal_connections") >= 2
    assert value(figs, "shoal_subscriptions") >= 1
    assert value(figs, "shoal_bytes_received_total") - value(before, "shoal_bytes_received_total") >= 12 * 10
    assert value(figs, "shoal_worker_up", worker="1") == 1
    assert value(figs, "shoal_workers") == 1
    assert value(figs, "shoal_cluster_enabled") == 0
    assert_sums(figs, 1)


def test_metrics_count_queue_depth_and_a_full_queue_drop():
    with ops_node(1, max_queued_messages=3) as node:
        c = Client(node.port, "m13-offline", expiry=300)
        c.subscribe("m13/off", 1)
        c.close()
        wait_for(lambda: offline(node, "m13-offline"), 20)
        pub = Client(node.port, "m13-offpub")
        for _ in range(5):
            pub.publish("m13/off", b"q", 1)
        pub.close()
        figs = wait_for(lambda: (lambda f: value(f, "shoal_dropped_messages_total", cause="queue_full") == 2 and f)(scrape(node)),
                        20, 0.2, "queue_full drops")
        assert value(figs, "shoal_queued_messages") == 3
        assert value(figs, "shoal_sessions_offline") == 1
        assert value(figs, "shoal_dropped_messages_total", cause="expired") == 0
        assert value(figs, "shoal_store_writes_total") > 0
        assert_sums(figs, 1)


def test_two_workers_sums_links_and_takeovers(two, clients):
    # clients until both workers hold some (the kernel spreads them)
    made = []
    for i in range(40):
        made.append(clients(two.port, f"m13-w-{i}"))
        held = {r["worker"] for r in listing(two, "clients") if r["client"].startswith("m13-w-")}
        if held == {1, 2} and i >= 3:
            break
    assert held == {1, 2}
    where = {r["client"]: r["worker"] for r in listing(two, "clients")}
    sub = next(c for c in made if where[c.cid] == 1)
    pub = next(c for c in made if where[c.cid] == 2)
    before = scrape(two)
    sub.subscribe("m13/x/#", 1)
    for i in range(20):
        pub.publish("m13/x/y", b"hello", 1)
    wait_for(lambda: len(sub.messages) == 20, 20, what="deliveries across workers")

    def moved(f):
        d = value(f, "shoal_router_link_forwarded_messages_total") - value(before, "shoal_router_link_forwarded_messages_total")
        return d >= 20 and f

    figs = wait_for(lambda: moved(scrape(two)), 20, 0.2, "link figures")
    assert value(figs, "shoal_worker_router_link_forwarded_messages_total", worker="2") \
        - value(before, "shoal_worker_router_link_forwarded_messages_total", worker="2") >= 20
    assert value(figs, "shoal_worker_router_link_delivered_messages_total", worker="1") \
        - value(before, "shoal_worker_router_link_delivered_messages_total", worker="1") >= 20
    assert value(figs, "shoal_router_forwarded_messages_total") - value(before, "shoal_router_forwarded_messages_total") >= 20
    assert value(figs, "shoal_router_members") == 2
    assert value(figs, "shoal_worker_up", worker="1") == value(figs, "shoal_worker_up", worker="2") == 1
    assert_sums(figs, 2)

    # takeovers of persistent sessions, until both kinds happened (the kernel picks the worker):
    # each counted once, its latency observed once; across workers also by the router
    t0 = scrape(two)

    def delta(f, name, **labels):
        return value(f, name, **labels) - value(t0, name, **labels)

    attempts = 0
    for k in range(20):
        first = clients(two.port, f"m13-dup-{k}", expiry=300, clean=False)
        clients(two.port, f"m13-dup-{k}", expiry=300, clean=False)
        assert first.disconnected.wait(20) and first.reason == 0x8E  # session taken over
        attempts += 1
        figs = wait_for(lambda: (lambda f: delta(f, "shoal_takeovers_total", where="same_worker")
                                 + delta(f, "shoal_takeovers_total", where="other_worker") == attempts and f)(scrape(two)),
                        20, 0.2, "takeover count")
        cross = delta(figs, "shoal_takeovers_total", where="other_worker")
        if 0 < cross < attempts:
            break
    assert 0 < cross < attempts
    assert delta(figs, "shoal_takeover_seconds_count") == attempts
    assert delta(figs, "shoal_sessions_moved_in_total") == cross
    assert delta(figs, "shoal_router_handover_seconds_count") == cross
    assert value(figs, "shoal_takeover_seconds_bucket", le="+Inf") == value(figs, "shoal_takeover_seconds_count")
    assert_sums(figs, 2)


def test_http_connections_are_bounded_and_a_silent_one_is_closed():
    with ops_node(1, admin_max_connections=2) as node:
        held = [socket.create_connection(("127.0.0.1", node.metrics_port), timeout=30) for _ in range(2)]
        try:
            wait_for(lambda: curl(node, "/health")[0] == 0, 10, 0.1, "a third connection refused")
            for s in held:  # silent: closed by the router after its idle time, without an answer
                assert s.recv(100) == b""
            assert curl(node, "/health")[0] == 200
        finally:
            for s in held:
                s.close()


def test_metrics_port_in_use_is_logged_and_mqtt_still_serves(clients):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with Node(workers=1, metrics_port=port) as node:
            wait_for(lambda: "cannot listen for metrics" in node.log(), 20, 0.1, "the error in the log")
            assert f"port={port}" in node.log()
            c = clients(node.port, "m13-noport")
            assert c.connected.is_set()
            # the admin socket still serves (once the worker's first beat is in)
            assert [r["client"] for r in listing(node, "clients")] == ["m13-noport"]


def test_bad_http_requests_get_an_answer_and_the_node_keeps_serving(one):
    with socket.create_connection(("127.0.0.1", one.metrics_port), timeout=20) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)
        assert s.recv(100).startswith(b"HTTP/1.1 431")
    with socket.create_connection(("127.0.0.1", one.metrics_port), timeout=20) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert curl(one, "/health")[0] == 200


# -- shoalctl -----------------------------------------------------------------------------
def test_shoalctl_lists_and_kicks_on_a_two_worker_node(two, clients):
    v5 = clients(two.port, "m13-ctl-v5", keepalive=30)
    v3 = clients(two.port, "m13-ctl-v3", mqtt.MQTTv311, keepalive=45)
    v5.subscribe("m13/ctl/+", 1)
    v3.subscribe("m13/ctl/#", 0)
    off = clients(two.port, "m13-ctl-off", expiry=600)
    off.subscribe("m13/ctl/off", 1)
    off.close()
    wait_for(lambda: offline(two, "m13-ctl-off"), 20)

    out = rows(shoalctl(two, "nodes").stdout)
    assert [r["NODE"] for r in out] == [two.name]
    assert out[0]["WORKERS"] == "1,2" and out[0]["READY"] == "yes"

    listed = {r["CLIENT"]: r for r in rows(shoalctl(two, "clients").stdout)}
    assert listed["m13-ctl-v5"]["PROTOCOL"] == "5.0" and listed["m13-ctl-v5"]["KEEPALIVE"] == "30"
    assert listed["m13-ctl-v3"]["PROTOCOL"] == "3.1.1" and listed["m13-ctl-v3"]["KEEPALIVE"] == "45"
    assert "m13-ctl-off" not in listed
    for cid in ("m13-ctl-v5", "m13-ctl-v3"):
        assert listed[cid]["NODE"] == two.name and listed[cid]["WORKER"] in ("1", "2")
        assert listed[cid]["ADDRESS"].startswith("127.0.0.1:")
    # the worker shown is the one holding the connection: the worker's own answer over TCP agrees
    tcp = json.loads(shoalctl(two, "--json", "clients", "--client", "m13-ctl-v5", tcp=True).stdout)
    assert [r["worker"] for r in tcp["clients"]] == [int(listed["m13-ctl-v5"]["WORKER"])]

    sessions = {r["CLIENT"]: r for r in rows(shoalctl(two, "sessions").stdout)}
    assert sessions["m13-ctl-off"]["CONNECTED"] == "no" and sessions["m13-ctl-off"]["EXPIRY"] == "600"
    assert sessions["m13-ctl-v5"]["CONNECTED"] == "yes"

    subs = {(r["CLIENT"], r["FILTER"]): r for r in rows(shoalctl(two, "subscriptions").stdout)}
    assert subs[("m13-ctl-v5", "m13/ctl/+")]["QOS"] == "1"
    assert subs[("m13-ctl-v3", "m13/ctl/#")]["QOS"] == "0"
    assert ("m13-ctl-off", "m13/ctl/off") in subs

    routes = {(r["FILTER"], r["WORKER"]) for r in rows(shoalctl(two, "routes").stdout)}
    for cid, flt in (("m13-ctl-v5", "m13/ctl/+"), ("m13-ctl-v3", "m13/ctl/#")):
        assert (flt, listed[cid]["WORKER"]) in routes

    r = shoalctl(two, "kick", "m13-ctl-v5")
    assert f"kicked m13-ctl-v5 on node {two.name}" in r.stdout
    assert v5.disconnected.wait(20)
    assert v5.reason == 0x98  # administrative action
    v5.c.loop_stop()
    wait_for(lambda: "m13-ctl-v5" not in {x["CLIENT"] for x in rows(shoalctl(two, "clients").stdout)}, 20)
    r = shoalctl(two, "kick", "m13-ctl-v3", tcp=True)
    assert v3.disconnected.wait(20)  # 3.1.1: the connection closes
    v3.c.loop_stop()

    r = shoalctl(two, "kick", "no-such-client", check=False)
    assert r.returncode == 1 and "no connected client" in r.stderr


def test_shoalctl_limit_bounds_the_rows(one, clients):
    for i in range(4):
        clients(one.port, f"m13-lim-{i}")
    r = shoalctl(one, "--json", "clients", "--limit", "2")
    assert len(json.loads(r.stdout)["clients"]) == 2
    assert "showing 2 of" in r.stderr
    r = subprocess.run([str(VENV_BIN / "python"), "-m", "shoalctl", "--json", "clients", "--limit", "3"],
                       env=one.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and len(json.loads(r.stdout)["clients"]) == 3  # python -m shoalctl is the same


def test_kick_a_client_id_with_slashes_and_percent_signs(one, clients):
    odd = clients(one.port, "m13/odd%41 id?#")
    r = shoalctl(one, "kick", "m13/odd%41 id?#")
    assert "kicked m13/odd%41 id?#" in r.stdout
    assert odd.disconnected.wait(20) and odd.reason == 0x98
    odd.c.loop_stop()


def test_admin_token_guards_the_api_over_tcp():
    with ops_node(1, admin_token="s3cret") as node:
        assert curl(node, "/api/v1/clients")[0] == 401
        assert curl(node, "/api/v1/clients", token="wrong")[0] == 401
        assert curl(node, "/api/v1/clients", token="s3cret")[0] == 200
        assert curl(node, "/api/v1/clients", unix=True)[0] == 200  # the owner-only socket
        assert curl(node, "/metrics")[0] == 200 and curl(node, "/health")[0] == 200
        r = shoalctl(node, "clients", tcp=True, check=False, drop=("SHOAL_ADMIN_TOKEN",))
        assert r.returncode != 0 and "401" in r.stderr
        assert shoalctl(node, "--token", "s3cret", "clients", tcp=True, drop=("SHOAL_ADMIN_TOKEN",)).stdout.startswith("NODE")
        assert shoalctl(node, "clients", tcp=True).stdout.startswith("NODE")  # the token from SHOAL_ADMIN_TOKEN


# -- logs -------------------------------------------------------------------------------------
def test_json_logs_carry_node_worker_client_and_event():
    with ops_node(2, log_format="json") as node:
        c = Client(node.port, "m13-json")
        code, body = curl(node, "/api/v1/clients/m13-json/kick", "POST", unix=True)
        assert code == 200, body
        assert c.disconnected.wait(20)
        c.c.loop_stop()
        wid = json.loads(body)["worker"]

        def kicked():
            for line in node.log().splitlines():
                if line.startswith("{") and "kicked" in line:
                    return json.loads(line)
            return None

        ev = wait_for(kicked, 20, 0.1, "the kick's log line")
        assert ev["event"] == "client kicked by an administrator"
        assert ev["client"] == "m13-json" and ev["worker"] == str(wid) and ev["node"] == node.name
        shoal_lines = [line for line in node.log().splitlines() if not line.startswith("20")]  # circusd's own lines start with a date
        assert shoal_lines
        for line in shoal_lines:
            if line.startswith(("Traceback", " ")):
                continue
            obj = json.loads(line)
            assert obj["node"] == node.name and "event" in obj and ("worker" in obj or obj.get("process") == "router")
        assert set(node.worker_pids()) == {1, 2}  # the test harness reads the json lines too


# -- the cluster hook ------------------------------------------------------------------------
class AgentStandIn:
    """Speaks the ops protocol the cluster agent will speak (router/ops.py): beats with
    its joined flag and the other nodes, answers `stats` with its link figures. The
    agent has not landed; this shows the router's side of that interface works."""

    def __init__(self, node: Node, peers: list[dict]):
        import zmq

        from common.wire import WIRE_VERSION, Op, pack, unpack

        self.zmq, self.Op, self.pack, self.unpack = zmq, Op, pack, unpack
        self.wire = WIRE_VERSION  # (a BEAT without it speaks version 1, refused since hotpath's 2)
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, b"agent")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"ipc://{node.tmp}/shoal-{node.port}-ops.sock")
        self.peers = peers
        self.joined = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        zmq, Op = self.zmq, self.Op
        next_beat = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_beat:
                self.sock.send(self.pack([[Op.BEAT, "agent", os.getpid(), self.joined, time.time(), self.peers,
                                             self.wire]]))
                next_beat = now + 0.3
            if self.sock.poll(50, zmq.POLLIN):
                for op in self.unpack(self.sock.recv()):
                    if op[0] == Op.ASK and op[2] == "stats":
                        self.sock.send(self.pack([[Op.ANSWER, op[1], {"peer_links": 1, "forwarded_messages": 7}]]))
        self.sock.close(0)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)


def test_cluster_hook_ready_waits_for_join_and_shoalctl_asks_every_node(clients):
    with ops_node(1) as b, ops_node(2) as a:
        agent = AgentStandIn(a, [{"node": b.name, "api": f"http://127.0.0.1:{b.metrics_port}"}])
        try:
            wait_for(lambda: curl(a, "/ready")[0] == 503, 20, 0.1, "not ready until joined")
            assert json.loads(curl(a, "/ready")[1])["cluster"] is False
            assert curl(a, "/health")[0] == 200  # its processes are up
            agent.joined = True
            wait_for(lambda: curl(a, "/ready")[0] == 200, 20, 0.1, "ready once joined")

            figs = scrape(a)
            assert value(figs, "shoal_cluster_enabled") == 1 and value(figs, "shoal_cluster_joined") == 1
            assert value(figs, "shoal_cluster_peers") == 1
            assert value(figs, "shoal_cluster_peer_links") == 1
            assert value(scrape(b), "shoal_cluster_enabled") == 0

            on_a = clients(a.port, "m13-cl-a")
            on_b = clients(b.port, "m13-cl-b")
            out = rows(shoalctl(a, "nodes").stdout)
            assert [(r["NODE"], r["READY"]) for r in out] == [(a.name, "yes"), (b.name, "yes")]
            listed = {r["CLIENT"]: r["NODE"] for r in rows(shoalctl(a, "clients").stdout)}
            assert listed["m13-cl-a"] == a.name and listed["m13-cl-b"] == b.name
            r = shoalctl(a, "kick", "m13-cl-b")
            assert f"on node {b.name}" in r.stdout
            assert on_b.disconnected.wait(20) and on_b.reason == 0x98
            assert not on_a.disconnected.is_set()

            agent.stop()  # the agent is gone: the node is no longer joined
            wait_for(lambda: curl(a, "/ready")[0] == 503, 20, 0.2, "not ready without its agent")
        finally:
            agent.stop()


# -- the node protocol's wire version ------------------------------------------------------------
def test_a_member_speaking_another_wire_version_is_refused_counted_and_logged(two):
    """A stranger process on the node's ipc sockets (as an old install would be) says HELLO
    and BEAT with wire version 99: no WELCOME (a PING after it is answered as from an unknown
    member), not an ops member, counted in /metrics and logged with what to fix. The ops are
    written with msgpack directly (the wire form, not Shoal's own encoder)."""
    import msgpack
    import zmq

    base = value(scrape(two), "shoal_router_wire_refused_total")
    since = len(two.log())
    ctx = zmq.Context.instance()
    data = ctx.socket(zmq.DEALER)
    ops = ctx.socket(zmq.DEALER)
    try:
        for sock, name in ((data, "router"), (ops, "ops")):
            sock.setsockopt(zmq.IDENTITY, b"w9")
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"ipc://{two.tmp}/shoal-{two.port}-{name}.sock")
        data.send(msgpack.packb([[1, 99, ["m13/wire"], [], []], [10]]))  # HELLO (wire 99), PING
        ops.send(msgpack.packb([[40, "w9", os.getpid(), True, time.time(), None, 99]]))  # BEAT (wire 99)
        assert data.poll(20_000), "the router answered nothing"
        first = msgpack.unpackb(data.recv(), raw=False)
        assert [op[0] for op in first] == [27]  # PONG only: never welcomed
        wait_for(lambda: value(scrape(two), "shoal_router_wire_refused_total") >= base + 2, 20, 0.1,
                 "both refusals counted")
        log = two.log(since)
        assert "member refused: it speaks another wire version" in log and "make install" in log
        assert "channel=router" in log or '"channel": "router"' in log
        code, body = curl(two, "/health")
        assert code == 200 and "w9" not in body  # not an ops member
    finally:
        data.close(0)
        ops.close(0)
