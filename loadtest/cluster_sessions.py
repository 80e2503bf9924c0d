"""``python -m loadtest.cluster_sessions``: what one owner per client id costs (issue 11).

Starts one etcd, three Shoal nodes joined to it (one worker each unless
--workers), one Shoal node alone and mosquitto, in the same invocation, and
measures:

- connect rate: clients that CONNECT (new client id, clean start), wait for
  CONNACK and DISCONNECT, --concurrency at a time, for --seconds: on the node
  alone; on the three cluster nodes at once (one load per node, the figure per
  node); on mosquitto. In the cluster every such connect writes sessions/owners/<id> in
  etcd (a compare-and-swap) and its end deletes it.
- takeover latency: one v5 client id with a persistent session connects in turn
  on node 1 and node 2 (each CONNECT takes the session over from the other node:
  CAS in etcd + gRPC TakeoverSession), CONNECT -> CONNACK, --takeovers times;
  the same on one node alone (a takeover between connections of one node) and on
  mosquitto.

Each connect-rate row also gives the CPU-seconds per connect, summed over every
process that the run keeps busy: for a cluster row every process of the three
nodes (workers, router, agent, circusd) and etcd, also when only n1 is loaded
(what n1's connects cost the others); for the node alone its processes; for
mosquitto its one process. A row whose rate falls while its CPU per connect
stays is a machine out of CPU (two cores shared by three nodes and etcd); a
row whose CPU per connect grows is a slower path. ``--breakdown`` adds each
process's CPU-seconds and etcd's own figures per row (transactions and WAL
fsyncs per connect, the mean fsync).

Each row also says what the load generator (this process: one asyncio loop for
every loaded node) spent per connect, and how much of the machine was idle
meanwhile (``/proc/stat``, every CPU, other tenants included). The client runs
on the same cores: a row with the machine about 0% idle is bound by CPU, the
load generator's share included, however little the brokers used; only a row
with idle CPU left waits for something (measured: docs/architecture.md).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import resource
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from loadtest.bench.brokers import Mosquitto, Shoal
from loadtest.bench.procstat import CpuMeter
from loadtest.cluster_bench import ClusterNode, EtcdServer, breakdown
from mqtt import Connack, Connect, Disconnect, Framer, Prop, SubAck, Subscribe, Subscription, decode, encode

HOST = "127.0.0.1"
_ids = itertools.count()


async def _connack(reader, framer: Framer, version: int):
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed before CONNACK")
        for first, body in framer.feed(data):
            p = decode(first, body, version)
            if isinstance(p, Connack):
                return p


async def one_connect(port: int, prefix: str) -> bool:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(encode(Connect(client_id=f"{prefix}-{next(_ids)}", clean_start=True, keepalive=60, version=4), 4))
        ack = await asyncio.wait_for(_connack(reader, Framer(), 4), 30)
        writer.write(encode(Disconnect(0), 4))
        await writer.drain()
        return ack.reason_code == 0
    finally:
        writer.close()


async def connect_rate(port: int, seconds: float, concurrency: int, prefix: str) -> tuple[float, int]:
    """(connects/s, connects done)."""
    done = 0
    failed = 0
    end = time.monotonic() + seconds

    async def loop():
        nonlocal done, failed
        while time.monotonic() < end:
            try:
                ok = await one_connect(port, prefix)
            except (OSError, asyncio.TimeoutError, ConnectionError):
                ok = False
            if ok:
                done += 1
            else:
                failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    if failed:
        print(f"  {failed} connects failed on port {port}", file=sys.stderr)
    return done / (time.monotonic() - t0), done


async def _suback(reader, framer: Framer, version: int):
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed before SUBACK")
        for first, body in framer.feed(data):
            p = decode(first, body, version)
            if isinstance(p, SubAck):
                return p


async def takeovers(ports: list[int], count: int, cid: str, new_filter: bool = False) -> list[float]:
    """ms from CONNECT to CONNACK, each CONNECT on the next port in turn (session present).
    new_filter: before each takeover the session subscribes to one more filter (untimed), so
    each CONNACK waits for a route new to its node to be in etcd and on every node."""
    props = {Prop.SESSION_EXPIRY_INTERVAL: 300}
    held = []
    out = []
    for i in range(count + 1):
        port = ports[i % len(ports)]
        reader, writer = await asyncio.open_connection(HOST, port)
        t0 = time.perf_counter()
        writer.write(encode(Connect(client_id=cid, clean_start=(i == 0), keepalive=60, version=5, properties=dict(props)), 5))
        ack = await asyncio.wait_for(_connack(reader, Framer(), 5), 30)
        ms = (time.perf_counter() - t0) * 1000
        if ack.reason_code != 0 or (i > 0 and not ack.session_present):
            raise RuntimeError(f"takeover {i} on {port}: {ack}")
        if i:
            out.append(ms)
        if new_filter:
            writer.write(encode(Subscribe(1, [Subscription(f"tk/{cid}/{i}", 1)]), 5))
            await asyncio.wait_for(_suback(reader, Framer(), 5), 30)
        held.append(writer)
        if len(held) > 2:
            held.pop(0).close()
    for w in held:
        w.close()
    return out


def leader_failover(nodes: list, ttl: int) -> tuple[str, str, float]:
    """SIGKILL the leader's node; seconds until a surviving node names another leader."""
    import os
    import signal
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from loadtest.chaos import children

    seen: list[tuple[float, str]] = []
    got = threading.Event()

    def on_msg(client, userdata, msg):
        seen.append((time.monotonic(), msg.payload.decode()))
        got.set()

    def watch(port: int):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"failover-{port}")
        c.on_message = on_msg
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("$SYS/broker/cluster/leader")
        c.connect(HOST, port)
        c.loop_start()
        return c

    first = watch(nodes[0].port)
    if not got.wait(20):
        raise RuntimeError("no $SYS/broker/cluster/leader")
    first.loop_stop()
    first.disconnect()
    old = seen[-1][1]
    dead = next(n for n in nodes if n.name == old)
    survivor = next(n for n in nodes if n is not dead)
    seen.clear()
    got.clear()
    c = watch(survivor.port)
    got.wait(20)  # the retained name
    got.clear()
    t0 = time.monotonic()
    for pid in [dead.proc.pid, *children(dead.proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    dead.proc.wait(5)
    if not got.wait(10 * ttl + 30):
        raise RuntimeError("no new leader")
    c.loop_stop()
    c.disconnect()
    return old, seen[-1][1], time.monotonic() - t0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Metered:
    """CPU of a set of processes over one run: mark() before, used() after."""

    def __init__(self, meters: dict[str, CpuMeter]):
        self.meters = meters

    def mark(self) -> None:
        for m in self.meters.values():
            m.mark()

    def used(self) -> float:
        return sum(m.sample() for m in self.meters.values())

    def breakdown(self) -> str:
        return breakdown(self.meters)


class Machine:
    """The whole machine's CPU time (/proc/stat, every CPU) and this process's own, over one
    run: mark() before, sample() after."""

    def __init__(self):
        self._stat = self._self = None

    @staticmethod
    def _cpu() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]

    @staticmethod
    def _own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def mark(self) -> None:
        self._stat, self._self = self._cpu(), self._own()

    def sample(self) -> tuple[float, float]:
        """(idle share of every CPU's time, CPU-seconds this process used) since mark()."""
        d = [b - a for a, b in zip(self._stat, self._cpu())]
        idle = d[3] + (d[4] if len(d) > 4 else 0)  # idle + iowait
        return idle / max(1, sum(d)), self._own() - self._self


# etcd's figures per row (--breakdown): its gRPC Txn calls, and its WAL fsyncs with their time
_ETCD_FIGURES = {"etcd_disk_wal_fsync_duration_seconds_sum": "fsync_s", "etcd_disk_wal_fsync_duration_seconds_count": "fsyncs"}
_METRIC = re.compile(r"([a-z_]+)(\{[^}]*\})? (\S+)$")


def parse_etcd_metrics(text: str) -> dict[str, float]:
    """From etcd's /metrics: txns (gRPC Txn calls handled, every code), fsyncs and fsync_s
    (WAL fsyncs, their seconds), fsyncs_128ms (those that took 128 ms at most)."""
    out = {"txns": 0.0, "fsyncs": 0.0, "fsync_s": 0.0, "fsyncs_128ms": 0.0}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m is None:
            continue
        name, labels, value = m.groups()
        if name in _ETCD_FIGURES:
            out[_ETCD_FIGURES[name]] = float(value)
        elif name == "etcd_disk_wal_fsync_duration_seconds_bucket" and labels and 'le="0.128"' in labels:
            out["fsyncs_128ms"] = float(value)
        elif name == "grpc_server_handled_total" and labels and 'grpc_method="Txn"' in labels:
            out["txns"] += float(value)
    return out


def etcd_figures(url: str) -> dict[str, float]:
    """parse_etcd_metrics of the etcd at url ({} when it does not answer)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            return parse_etcd_metrics(r.read().decode())
    except OSError:
        return {}


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.cluster_sessions")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of connect load per run")
    ap.add_argument("--concurrency", type=int, default=20, help="connections in progress per node")
    ap.add_argument("--takeovers", type=int, default=300)
    ap.add_argument("--workers", type=int, default=1, help="workers per node")
    ap.add_argument("--breakdown", action="store_true", help="also print the CPU-seconds of every process per run")
    args = ap.parse_args(argv)
    load_before = load()
    breakdowns: list[str] = []
    with tempfile.TemporaryDirectory(prefix="csess") as tmpdir:
        tmp = Path(tmpdir)
        etcd = EtcdServer(tmp)
        etcd.start()
        nodes = []
        for name in ("n1", "n2", "n3"):
            d = tmp / name
            d.mkdir()
            nodes.append(ClusterNode(args.workers, d, name, etcd.url))
        (tmp / "alone").mkdir()
        alone = Shoal(args.workers, tmp / "alone")
        (tmp / "mosquitto").mkdir()
        mosq = Mosquitto(1, tmp / "mosquitto")
        try:
            for b in (*nodes, alone, mosq):
                b.start()
            cluster = Metered({**{n.name: CpuMeter([n.proc.pid], include_roots=False) for n in nodes},
                               "etcd": CpuMeter([etcd.proc.pid])})
            single_cpu = Metered({"alone": alone.meter})
            mosq_cpu = Metered({"mosquitto": mosq.meter})

            machine = Machine()
            seen: dict[str, tuple[float, float]] = {}  # row -> (machine idle share, load generator CPU-s per connect)

            def measured(label: str, meter: Metered, coro_fn) -> tuple[list, float]:
                """[(rate, done) per loaded node], CPU-seconds per connect."""
                print(f"connect rate: {label} ...", file=sys.stderr, flush=True)
                meter.mark()
                etcd0 = etcd_figures(etcd.url) if args.breakdown and meter is cluster else {}
                machine.mark()
                res = asyncio.run(coro_fn())
                idle, client = machine.sample()
                cpu = meter.used()
                done = max(1, sum(d for _, d in res))
                seen[label] = (idle, client / done)
                if args.breakdown:
                    line = f"{label}: {meter.breakdown()}"
                    etcd1 = etcd_figures(etcd.url)
                    if etcd0 and etcd1:
                        txns = etcd1["txns"] - etcd0["txns"]
                        fsyncs = etcd1.get("fsyncs", 0) - etcd0.get("fsyncs", 0)
                        fsync_s = etcd1.get("fsync_s", 0) - etcd0.get("fsync_s", 0)
                        line += (f"; etcd: {txns / done:.2f} transactions and {fsyncs / done:.2f} WAL fsyncs per connect,"
                                 f" fsync mean {fsync_s / max(1, fsyncs) * 1000:.2f} ms")
                    breakdowns.append(line)
                return res, cpu / done

            async def on(*ports_prefixes):
                return await asyncio.gather(*(connect_rate(port, args.seconds, args.concurrency, prefix)
                                              for port, prefix in ports_prefixes))

            single, single_c = measured("one node alone", single_cpu, lambda: on((alone.port, "alone")))
            per_node, per_node_c = measured("three cluster nodes at once", cluster,
                                            lambda: on(*((n.port, n.name) for n in nodes)))
            mq, mq_c = measured("mosquitto", mosq_cpu, lambda: on((mosq.port, "mq")))
            one_of_three, one_c = measured("one cluster node loaded alone", cluster,
                                           lambda: on((nodes[0].port, "n1only")))
            print("takeovers ...", file=sys.stderr, flush=True)
            cross = asyncio.run(takeovers([nodes[0].port, nodes[1].port], args.takeovers, "tk-cross"))
            fresh = asyncio.run(takeovers([nodes[0].port, nodes[1].port], args.takeovers, "tk-fresh", True))
            same = asyncio.run(takeovers([alone.port], args.takeovers, "tk-alone"))
            same_cluster = asyncio.run(takeovers([nodes[2].port], args.takeovers, "tk-same"))
            mqt = asyncio.run(takeovers([mosq.port], args.takeovers, "tk-mq"))
            print("leader failover ...", file=sys.stderr, flush=True)
            failover = leader_failover(nodes, 5)
        finally:
            for b in (*nodes, alone, mosq):
                b.stop()
            etcd.stop()
    us = 1e6
    print(f"load average (1/5/15 min) before {load_before}, after {load()}; {os.cpu_count()} CPUs")
    print()
    def extra(label: str) -> str:
        """The load generator's CPU-µs per connect and the machine's idle share in that row."""
        idle, client = seen[label]
        return f" {client * us:,.0f} | {idle * 100:.0f}% |"

    print(f"| connect rate ({args.concurrency} at a time, {args.seconds:g} s) | connects/s | CPU-µs per connect"
          " | load generator CPU-µs per connect | machine idle |")
    print("|---|---:|---:|---:|---:|")
    print(f"| shoal, one node alone | {single[0][0]:,.0f} | {single_c * us:,.0f} |" + extra("one node alone"))
    for n, (r, _) in zip(nodes, per_node):
        print(f"| shoal cluster, {n.name} (three nodes loaded at once) | {r:,.0f} | {per_node_c * us:,.0f} (all three + etcd) |"
              + extra("three cluster nodes at once"))
    print(f"| shoal cluster, n1 loaded alone | {one_of_three[0][0]:,.0f} | {one_c * us:,.0f} (all three + etcd) |"
          + extra("one cluster node loaded alone"))
    print(f"| mosquitto | {mq[0][0]:,.0f} | {mq_c * us:,.0f} |" + extra("mosquitto"))
    print()
    print(f"| takeover ({args.takeovers} times) | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for label, xs in (("shoal across nodes (n1 <-> n2)", cross),
                      ("shoal across nodes, a filter new to the node each time", fresh),
                      ("shoal cluster, same node", same_cluster),
                      ("shoal, one node alone", same), ("mosquitto", mqt)):
        print(f"| {label} | {pct(xs, 0.5):.2f} | {pct(xs, 0.99):.2f} |")
    print()
    print(f"leader failover: {failover[0]} SIGKILLed, {failover[1]} named leader {failover[2]:.2f} s later "
          "(SHOAL_CLUSTER_LEASE_TTL=5: the leader key's own lease, 3 s, expires, then the next try takes the key)")
    if breakdowns:
        print()
        print("CPU-seconds per process:")
        for line in breakdowns:
            print(f"- {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
