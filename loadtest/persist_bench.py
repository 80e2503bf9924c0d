"""``python -m loadtest.persist_bench``: what durability costs at QoS 1.

Runs one QoS 1 load against Shoal (1 worker) with persistence off and with each
``SHOAL_SYNC`` policy, and against mosquitto without and with its persistence,
in the same invocation, and prints a Markdown table of delivered msgs/s and
broker CPU per message. The subscribers hold persistent sessions (clean start
0, session expiry 1 h), so every delivery is written (inflight record) and
removed again on PUBACK: the store is on the path of every message.

mosquitto's persistence is a periodic snapshot (``autosave_interval``), not a
write per message: its figure is there for scale, not as the same guarantee.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.bench.brokers import Mosquitto, Shoal

ROOT = Path(__file__).resolve().parents[1]


def load(port: int, pairs: int, messages: int, duration: float) -> dict:
    py = sys.executable
    common = ["-p", str(port), "-q", "1", "--json"]
    total = str(pairs * messages)  # -L counts the whole run, over every client
    sub = subprocess.Popen(
        [py, "-m", "loadtest", "sub", *common, "-c", str(pairs), "-t", "pb/%i", "-C", "false", "-x", "3600",
         "-L", total, "--duration", str(duration + 10)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the subscribers say when they are all subscribed
    for line in sub.stderr:
        if "settled_s" in line:
            break
    t0 = time.monotonic()
    pub = subprocess.run(
        [py, "-m", "loadtest", "pub", *common, "-c", str(pairs), "-t", "pb/%i", "-I", "0", "-s", "64",
         "--inflight", "100", "-L", total, "--duration", str(duration)],
        cwd=ROOT, capture_output=True, text=True)
    out, _ = sub.communicate(timeout=duration + 30)
    wall = time.monotonic() - t0
    s = json.loads(out.strip().splitlines()[-1])
    p = json.loads(pub.stdout.strip().splitlines()[-1])
    return {"sub": s, "pub": p, "wall": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.persist_bench")
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--messages", type=int, default=5000, help="per publisher")
    ap.add_argument("--duration", type=float, default=30.0)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pbench") as tmpdir:
        tmp = Path(tmpdir)
        mq1 = _mk(tmp, "mq1")
        brokers = [
            Shoal(1, _mk(tmp, "none"), "shoal, no persistence", env={"SHOAL_PERSISTENCE": "false"}),
            Mosquitto(1, _mk(tmp, "mq0"), "mosquitto, no persistence"),
            Shoal(1, _mk(tmp, "off"), "shoal, sync=off", env={"SHOAL_SYNC": "off"}),
            Shoal(1, _mk(tmp, "batch"), "shoal, sync=batch", env={"SHOAL_SYNC": "batch"}),
            Mosquitto(1, mq1, "mosquitto, persistence (autosave 1 s)",
                      conf={"persistence": "true", "persistence_location": f"{mq1}/", "autosave_interval": "1"}),
            Shoal(1, _mk(tmp, "always"), "shoal, sync=always", env={"SHOAL_SYNC": "always"}),
        ]
        for b in brokers:
            print(f"running {b.label} ...", file=sys.stderr, flush=True)
            b.start()
            try:
                b.meter.mark()
                r = load(b.port, args.pairs, args.messages, args.duration)
                cpu = b.meter.sample()
            finally:
                b.stop()
            got = r["sub"].get("received", 0)
            rate = r["sub"].get("recv_per_s") or (got / r["wall"] if r["wall"] else 0)
            rows.append((b.label, got, rate, cpu, r["sub"].get("latency_ms", {})))
    print("| broker | delivered | msgs/s | broker CPU-µs/msg | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, got, rate, cpu, lat in rows:
        per = f"{cpu * 1e6 / got:.1f}" if cpu is not None and got else "-"
        print(f"| {label} | {got} | {rate:,.0f} | {per} | {lat.get('p50', 0):.2f} | {lat.get('p99', 0):.2f} |")
    return 0


def _mk(tmp: Path, name: str) -> Path:
    d = tmp / name
    d.mkdir()
    return d


if __name__ == "__main__":
    raise SystemExit(main())
