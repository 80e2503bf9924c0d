"""``python -m loadtest.auth_bench``: what a password costs at connect.

In one invocation, a connection storm (``loadtest conn``: N clients, at most
2 x 50 connects in flight, each connects and disconnects) against

- mosquitto without and with a ``password_file``,
- Shoal without and with ``SHOAL_PASSWORD_FILE``, the latter three times: with
  the verification cache (the default: the clients share one user, so after
  the first login every connect is a cache hit, as in a reconnect storm), with
  ``SHOAL_AUTH_CACHE=0`` (every connect computes PBKDF2, as mosquitto does; at
  101 rounds in place on the event loop) and with that hash sent to the thread
  pool as well (``SHOAL_AUTH_INLINE_ITERATIONS=0``, the path of costlier hashes).

The password file is made by ``mosquitto_passwd -c -b`` and the same file is
given to both brokers; both keep ``allow_anonymous true``, so the clients'
username and password are what is checked. Prints a Markdown table of
connects/s, connect latency and broker CPU per connect (medians of
``--rounds`` interleaved rounds: the figures of one storm vary a lot on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtest.bench.brokers import Mosquitto, Shoal

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "bench", "bench-secret"


def storm(port: int, clients: int, auth: bool, version: int) -> dict:
    cmd = [sys.executable, "-m", "loadtest", "conn", "-p", str(port), "-c", str(clients), "-i", "0",
           "--max-connecting", "50", "--processes", "2", "--hold", "0", "-V", str(version), "--json"]
    if auth:
        cmd += ["-u", USER, "-P", PASSWORD]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.auth_bench")
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=1, help="Shoal workers")
    ap.add_argument("--version", type=int, default=5, choices=(4, 5), help="MQTT protocol level")
    ap.add_argument("--rounds", type=int, default=3, help="storms per broker (interleaved); medians are printed")
    args = ap.parse_args(argv)
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="abench") as tmpdir:
        tmp = Path(tmpdir)
        pw = tmp / "passwd"
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), USER, PASSWORD], check=True, capture_output=True)
        tmp.chmod(0o755)  # mosquitto started as root reads it as user mosquitto
        pw.chmod(0o644)
        iterations = pw.read_text().split("$")[2]
        w = args.workers
        runs = [
            (Mosquitto(1, _mk(tmp, "mq-plain"), "mosquitto, plain TCP"), False),
            (Mosquitto(1, _mk(tmp, "mq-auth"), "mosquitto, password_file", conf={"password_file": str(pw)}), True),
            (Shoal(w, _mk(tmp, "sh-plain"), f"shoal {w}w, plain TCP"), False),
            (Shoal(w, _mk(tmp, "sh-auth"), f"shoal {w}w, password file (cache on, default)",
                   env={"SHOAL_PASSWORD_FILE": str(pw)}), True),
            (Shoal(w, _mk(tmp, "sh-nocache"),
                   f"shoal {w}w, password file, SHOAL_AUTH_CACHE=0 (every connect hashed, in place)",
                   env={"SHOAL_PASSWORD_FILE": str(pw), "SHOAL_AUTH_CACHE": "0"}), True),
            (Shoal(w, _mk(tmp, "sh-pool"), f"shoal {w}w, password file, SHOAL_AUTH_CACHE=0 "
                   "SHOAL_AUTH_INLINE_ITERATIONS=0 (every connect hashed in the thread pool)",
                   env={"SHOAL_PASSWORD_FILE": str(pw), "SHOAL_AUTH_CACHE": "0",
                        "SHOAL_AUTH_INLINE_ITERATIONS": "0"}), True),
        ]
        for rnd in range(args.rounds):
            for broker, auth in runs:
                print(f"round {rnd + 1}: {broker.label} ...", file=sys.stderr, flush=True)
                broker.start()
                try:
                    broker.meter.mark()
                    r = storm(broker.port, args.clients, auth, args.version)
                    cpu = broker.meter.sample()
                finally:
                    broker.stop()
                got = r.get("connected_max", 0)
                lat = r.get("connect_ms", {})
                results.setdefault(broker.label, []).append((
                    got, r.get("errors", 0), r.get("connect_rate", 0), lat.get("p50", 0), lat.get("p99", 0),
                    cpu * 1e6 / got if cpu is not None and got else float("nan")))
    print(f"{args.clients} clients, MQTT {'5.0' if args.version == 5 else '3.1.1'}, "
          f"$7$ PBKDF2-SHA512 with {iterations} iterations (mosquitto_passwd's default), "
          f"median of {args.rounds} interleaved rounds")
    print()
    print("| broker | connected | errors | connects/s | connect p50 ms | p99 ms | broker CPU-µs/connect |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, rs in results.items():
        got, errors, rate, p50, p99, per = (statistics.median(col) for col in zip(*rs))
        print(f"| {label} | {got:.0f} | {errors:.0f} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {per:.0f} |")
    return 0


def _mk(tmp: Path, name: str) -> Path:
    d = tmp / name
    d.mkdir()
    return d


if __name__ == "__main__":
    raise SystemExit(main())
