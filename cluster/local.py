"""`make cluster` (`python -m cluster.local`): three nodes on this host, one command.

Each node is `circusd circus.ini` with its own SHOAL_PORT (1883, 1884, 1885 by
default), SHOAL_NODE_NAME (node1, node2, node3) and an embedded etcd member
(SHOAL_ETCD_INITIAL_CLUSTER names all three); data under data/<port>/ (the
etcd member's in data/<port>/etcd). Ctrl-C (or SIGTERM) stops every node.
Other SHOAL_* variables (e.g. SHOAL_WORKERS) pass through to every node.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def node_env(ports: list[int], i: int, data: str | None) -> dict:
    port = ports[i]
    initial = ",".join(f"node{j + 1}=http://127.0.0.1:{p + 30000}" for j, p in enumerate(ports))
    env = dict(os.environ)
    env.update({
        "SHOAL_PORT": str(port),
        "SHOAL_NODE_NAME": f"node{i + 1}",
        "SHOAL_ETCD_INITIAL_CLUSTER": initial,
        "SHOAL_ETCD_PEER_URL": f"http://127.0.0.1:{port + 30000}",
        "SHOAL_ETCD_CLIENT_URL": f"http://127.0.0.1:{port + 20000}",
        "SHOAL_CLUSTER_ADDR": f"127.0.0.1:{port + 10000}",
    })
    if data is not None:
        env["SHOAL_DATA_DIR"] = os.path.join(data, str(port))
    return env


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__.splitlines()[0])
    ap.add_argument("--ports", default="1883,1884,1885", help="MQTT ports, one node each (default 1883,1884,1885)")
    ap.add_argument("--data", default=None, help="data directory (default: data/<port> per node)")
    args = ap.parse_args()
    ports = [int(p) for p in args.ports.split(",") if p.strip()]
    circusd = str(Path(sys.executable).parent / "circusd")
    procs = []
    for i in range(len(ports)):
        procs.append(subprocess.Popen([circusd, "circus.ini"], cwd=ROOT, env=node_env(ports, i, args.data)))
    print(f"shoal cluster: {len(ports)} nodes, MQTT on " + ", ".join(f"127.0.0.1:{p}" for p in ports)
          + "; Ctrl-C stops them", flush=True)
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    reported = set()
    while not stopping and any(p.poll() is None for p in procs):
        for i, p in enumerate(procs):
            if p.poll() is not None and i not in reported:
                reported.add(i)
                print(f"shoal cluster: node{i + 1} (port {ports[i]}) exited with {p.returncode}; the others go on", flush=True)
        time.sleep(0.2)  # (a signal ends the sleep early)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    code = 0
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        code = code or (p.returncode if p.returncode and p.returncode > 0 else 0)
    print("shoal cluster: stopped", flush=True)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
