"""``python -m loadtest.retained_ack``: what a retained publish's PUBACK waits for.

In a cluster a retained publish is acknowledged once the message is in the
node's store, in etcd, and applied by every live node (docs/architecture.md,
"Retained messages and shared subscriptions"). This starts one etcd, three
one-worker nodes joined to it and mosquitto in the same invocation, and times
sequential QoS 1 publishes (one at a time: PUBLISH, wait for PUBACK) on node 1:
retained ones (each a new topic, then cleared) and plain ones nobody subscribes
to, on the cluster and on mosquitto. Prints a Markdown table of PUBACK latency.
"""
from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from loadtest.cluster_bench import started_cluster
from mqtt import Connect, Framer, PubAck, Publish, decode, encode


def acks(port: int, count: int, retain: bool, prefix: str) -> list[float]:
    """Seconds from PUBLISH to PUBACK for `count` publishes, one after the other."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    framer = Framer()

    def recv():
        while True:
            for first, body in framer.feed(sock.recv(65536)):
                return decode(first, body, 5)

    sock.sendall(encode(Connect(client_id=f"{prefix}-{retain}", version=5, keepalive=60), 5))
    recv()
    out = []
    for i in range(count):
        for payload in ((b"v", b"") if retain else (b"v",)):  # a retained set, then its clear
            t = time.perf_counter()
            sock.sendall(encode(Publish(f"{prefix}/{i}", payload, 1, retain=retain, packet_id=1), 5))
            p = recv()
            assert isinstance(p, PubAck), p
            if payload:
                out.append(time.perf_counter() - t)
    sock.close()
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200, help="publishes of each kind")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rack") as d, started_cluster(Path(d), ("n1", "n2", "n3")) as (_, nodes, mosq):
        for label, port in (("Shoal, 3 nodes", nodes[0].port), ("mosquitto", mosq.port)):
            for retain in (True, False):
                xs = acks(port, args.count, retain, f"rack/{label[:5]}")
                rows.append((label, "retained (set)" if retain else "plain, no subscriber", pct(xs, 0.5), pct(xs, 0.99)))
    print(f"| broker | QoS 1 publish | PUBACK p50 ms | p99 ms |  ({args.count} each, one at a time)")
    print("|---|---|---:|---:|")
    for label, kind, p50, p99 in rows:
        print(f"| {label} | {kind} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
