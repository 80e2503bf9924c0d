"""What a metrics scrape and an admin list cost: ``python -m loadtest.ops_bench``.

Starts a Shoal node (``--workers``, default 2) with SHOAL_METRICS_PORT, holds
``--clients`` connections (default 2,000) with the load generator, then times
``--scrapes`` GETs of /metrics (latency, size, and the router's and workers'
CPU time they cost) and one ``shoalctl clients`` listing every connection.
mosquitto has no counterpart to beside it: it has no HTTP metrics, and its
$SYS figures are pushed at an interval rather than asked for.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .bench.brokers import HOST, Shoal, free_port


def cpu_seconds(pids) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(p) for p in f.read().split()]
    return out


def get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtest.ops_bench")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--scrapes", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shoal-opsbench"))
    mport = free_port()
    node = Shoal(args.workers, tmp)
    os.environ["SHOAL_METRICS_PORT"] = str(mport)  # (Shoal.command copies the environment)
    node.start()
    load = None
    try:
        load = subprocess.Popen([sys.executable, "-m", "loadtest", "conn", "-h", HOST, "-p", str(node.port),
                                 "-c", str(args.clients), "-i", "1", "--hold", "600", "--json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in load.stderr:  # the load generator says when every client is connected
            if '"settled_s"' in line:
                break
        else:
            raise SystemExit("the load generator ended before its clients connected")
        threading.Thread(target=load.stderr.read, daemon=True).start()  # keep its pipe from filling
        procs = children(node.proc.pid)
        cpu0, t0 = cpu_seconds(procs), time.perf_counter()
        times, size = [], 0
        for _ in range(args.scrapes):
            s = time.perf_counter()
            status, body = get(mport, "/metrics")
            times.append(time.perf_counter() - s)
            assert status == 200
            size = len(body)
        wall, cpu = time.perf_counter() - t0, cpu_seconds(procs) - cpu0
        times.sort()
        env = dict(os.environ, SHOAL_PORT=str(node.port), SHOAL_RUN_DIR=str(tmp / "run"))
        s = time.perf_counter()
        r = subprocess.run([str(Path(sys.executable).parent / "shoalctl"), "--json", "clients"],
                           env=env, capture_output=True, text=True, timeout=120)
        listing = time.perf_counter() - s
        rows = len(json.loads(r.stdout)["clients"]) if r.returncode == 0 else f"failed: {r.stderr.strip()}"
        print(f"node: {args.workers} workers, {args.clients} connections held")
        print(f"/metrics: {args.scrapes} scrapes, median {statistics.median(times) * 1000:.1f} ms, "
              f"p90 {times[int(len(times) * 0.9) - 1] * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms, {size} bytes")
        print(f"node CPU for those scrapes: {cpu * 1000 / args.scrapes:.2f} ms per scrape "
              f"(router and workers, {cpu:.2f} s over {wall:.2f} s)")
        print(f"shoalctl --json clients: {rows} rows in {listing:.2f} s")
    finally:
        if load is not None:
            load.terminate()
            load.wait(30)
        node.stop()


if __name__ == "__main__":
    main()
