"""``python -m loadtest.cluster_waits``: where a cluster CONNECT waits (issue 11's benchmarks).

Starts one etcd and three one-worker nodes as ``loadtest.cluster_sessions`` does and runs
its connect load (new id, clean session, CONNECT, CONNACK, DISCONNECT, --concurrency in
progress per loaded node) with the three nodes loaded at once, then n1 alone; but each
loaded node gets a load generator process of its own, and each row says, besides the
rate and the CPU-µs per connect:

- the connect latency (CONNECT written to CONNACK read) and, in each load generator, how
  long ``open_connection`` took and how late its loop ran a 1 ms timer (its loop lag);
- for every process of the cluster, etcd and each load generator, the seconds it spent
  runnable but waiting for a CPU (``/proc/<pid>/task/*/schedstat``, second field), beside
  the CPU-seconds it used;
- the machine's idle share (``/proc/stat``: idle + iowait over every CPU, other tenants
  included);
- etcd's transactions and WAL fsyncs per connect, the mean fsync and how many fsyncs took
  longer than 100 ms; the owner transactions each agent sent and the records they carried.

A row whose processes wait seconds for a CPU on a machine with no idle time left is bound
by CPU, whatever its own processes used; a row with idle time left and little waiting for
a CPU waits for something else. (This is how docs/architecture.md's third pass found that
the three-at-once row was bound by CPU when the load generator is counted.)
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import glob
import itertools
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from loadtest.bench.procstat import CpuMeter, all_stats, tree
from loadtest.cluster_bench import breakdown, cluster_figures, process_name, started_cluster
from loadtest.cluster_sessions import HOST, Machine, _connack, etcd_figures
from loadtest.cluster_sessions import pct as _pct
from mqtt import Connect, Disconnect, Framer, encode

_ids = itertools.count()


def pct(xs: list[float], q: float) -> float:
    return _pct(xs, q) if xs else float("nan")


def run_wait(pid: int) -> float:
    """Seconds the threads of pid spent runnable, waiting for a CPU, since they started."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass  # (a thread that ended meanwhile)
    return total / 1e9


def waits(roots: list[tuple[str, int, bool]]) -> dict[str, float]:
    """label -> seconds waiting for a CPU, for every process under each root."""
    stats = all_stats()
    out = {}
    for label, pid, with_root in roots:
        for st in tree(stats, [pid], with_root):
            out[f"{label}/{process_name(st.pid)}"] = out.get(f"{label}/{process_name(st.pid)}", 0.0) + run_wait(st.pid)
    return out


async def _load(port: int, seconds: float, concurrency: int, prefix: str) -> dict:
    latency: list[float] = []
    opening: list[float] = []
    lag: list[float] = []
    end = time.monotonic() + seconds
    loop = asyncio.get_running_loop()

    async def one() -> None:
        t = time.perf_counter()
        reader, writer = await asyncio.open_connection(HOST, port)
        opening.append((time.perf_counter() - t) * 1000)
        try:
            t = time.perf_counter()
            writer.write(encode(Connect(client_id=f"{prefix}-{next(_ids)}", clean_start=True, keepalive=60, version=4), 4))
            ack = await asyncio.wait_for(_connack(reader, Framer(), 4), 30)
            if ack.reason_code == 0:
                latency.append((time.perf_counter() - t) * 1000)
            writer.write(encode(Disconnect(0), 4))
            await writer.drain()
        finally:
            writer.close()

    async def client() -> None:
        while time.monotonic() < end:
            try:
                await one()
            except (OSError, asyncio.TimeoutError, ConnectionError):
                pass

    async def ticker() -> None:
        while time.monotonic() < end:
            t = loop.time()
            await asyncio.sleep(0.001)
            lag.append((loop.time() - t - 0.001) * 1000)

    await asyncio.gather(ticker(), *(client() for _ in range(concurrency)))
    return {"latency": latency, "open": opening, "lag": lag}


def load_process(args: tuple[int, float, int, str]) -> dict:
    """One load generator (a process of its own): its figures, CPU and waiting for a CPU."""
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = run_wait(os.getpid())
    out = asyncio.run(_load(*args))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu"] = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    out["wait"] = run_wait(os.getpid()) - w0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.cluster_waits")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=20, help="connections in progress per loaded node")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cwaits") as tmpdir:
        with started_cluster(Path(tmpdir), ["n1", "n2", "n3"]) as (etcd, nodes, _mosq):
            meters = {**{n.name: CpuMeter([n.proc.pid], include_roots=False) for n in nodes},
                      "etcd": CpuMeter([etcd.proc.pid])}
            roots = [(n.name, n.proc.pid, False) for n in nodes] + [("etcd", etcd.proc.pid, True)]
            machine = Machine()
            print(f"load average before: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
            for label, loaded in (("three nodes loaded at once", nodes), ("n1 loaded alone", nodes[:1])):
                print(f"{label} ...", file=sys.stderr, flush=True)
                e0, f0, w0 = etcd_figures(etcd.url), [cluster_figures(n) for n in nodes], waits(roots)
                for m in meters.values():
                    m.mark()
                machine.mark()
                with concurrent.futures.ProcessPoolExecutor(len(loaded)) as ex:
                    res = list(ex.map(load_process, [(n.port, args.seconds, args.concurrency, f"w{label[:2]}{n.name}")
                                                     for n in loaded]))
                idle, _ = machine.sample()
                cpu = sum(m.sample() for m in meters.values())
                e1, f1, w1 = etcd_figures(etcd.url), [cluster_figures(n) for n in nodes], waits(roots)
                done = max(1, sum(len(r["latency"]) for r in res))
                lat = [x for r in res for x in r["latency"]]
                print(f"\n## {label} (load average {os.getloadavg()[0]:.2f}, machine idle {idle * 100:.0f}%)")
                rates = ", ".join(f"{len(r['latency']) / args.seconds:,.0f}" for r in res)
                print(f"- connects/s per loaded node: {rates};"
                      f" cluster CPU-µs per connect {cpu / done * 1e6:,.0f} (three nodes + etcd)")
                print(f"- connect latency ms: p50 {pct(lat, .5):.2f}, p90 {pct(lat, .9):.2f}, p99 {pct(lat, .99):.2f}")
                for n, r in zip(loaded, res):
                    print(f"- load generator for {n.name}: CPU {r['cpu']:.2f} s ({r['cpu'] / max(1, len(r['latency'])) * 1e6:,.0f}"
                          f" µs per connect), waiting for a CPU {r['wait']:.2f} s; open_connection p50 {pct(r['open'], .5):.2f}"
                          f" ms; loop lag p50 {pct(r['lag'], .5):.2f}, p90 {pct(r['lag'], .9):.2f}, p99 {pct(r['lag'], .99):.2f} ms")
                print(f"- CPU-seconds: {breakdown(meters)}")
                wait = {k: w1[k] - w0.get(k, 0.0) for k in w1}
                print("- seconds waiting for a CPU: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in sorted(wait.items(), key=lambda kv: -kv[1]) if v >= 0.05))
                fsyncs = e1["fsyncs"] - e0["fsyncs"]
                print(f"- etcd: {(e1['txns'] - e0['txns']) / done:.2f} transactions and {fsyncs / done:.2f} WAL fsyncs per"
                      f" connect, fsync mean {(e1['fsync_s'] - e0['fsync_s']) / max(1, fsyncs) * 1000:.2f} ms,"
                      f" {fsyncs - (e1['fsyncs_128ms'] - e0['fsyncs_128ms']):.0f} over 128 ms")
                for n, a, b in zip(nodes, f0, f1):
                    txns = b.get("owner_txns_total", 0) - a.get("owner_txns_total", 0)
                    if txns:
                        records = b.get("owner_records_total", 0) - a.get("owner_records_total", 0)
                        print(f"- {n.name}'s agent: {txns:.0f} owner transactions, {records / txns:.1f} records each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
