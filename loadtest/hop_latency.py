"""``python -m loadtest.hop_latency``: what crossing nodes adds to one message, unloaded.

Starts one etcd, two one-worker Shoal nodes joined to it and mosquitto, in the same
invocation. One publisher (raw socket, TCP_NODELAY) on node 1, one subscriber on node 2;
`--count` messages one at a time, `--gap-ms` apart, at QoS 0 and QoS 1: the time from the
publisher's send to the subscriber's read (delivery) and, at QoS 1, to the publisher's
PUBACK (which waits until node 2 owns the message). The same against mosquitto (publisher
and subscriber on the one broker). Prints p50/p90/p99 in milliseconds.
"""
from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from loadtest.cluster_bench import started_cluster
from mqtt import Connect, Framer, Publish, Subscribe, Subscription, decode, encode


class Raw:
    def __init__(self, port: int, cid: str):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = Framer()
        self.got: list = []
        self.s.sendall(encode(Connect(client_id=cid, version=4, keepalive=60), 4))
        self.recv()  # CONNACK

    def recv(self):
        while not self.got:
            data = self.s.recv(65536)
            if not data:
                raise ConnectionError("closed")
            for first, body in self.f.feed(data):
                self.got.append(decode(first, body, 4))
        return self.got.pop(0)

    def close(self) -> None:
        self.s.close()


def run(pub_port: int, sub_port: int, count: int, gap: float, tag: str) -> dict:
    sub = Raw(sub_port, f"hl-sub-{tag}")
    sub.s.sendall(encode(Subscribe(1, [Subscription(f"hl/{tag}/#", 1)]), 4))
    sub.recv()  # SUBACK (on Shoal: routed on every node)
    pub = Raw(pub_port, f"hl-pub-{tag}")
    out = {}
    for qos in (0, 1):
        lat, ack = [], []
        for i in range(count):
            t0 = time.perf_counter()
            pub.s.sendall(encode(Publish(topic=f"hl/{tag}/x", payload=b"x" * 64, qos=qos,
                                         packet_id=i % 60000 + 1 if qos else None), 4))
            p = sub.recv()
            lat.append(time.perf_counter() - t0)
            if qos:
                sub.s.sendall(bytes([0x40, 2, p.packet_id >> 8, p.packet_id & 0xFF]))  # PUBACK
                pub.recv()
                ack.append(time.perf_counter() - t0)
            time.sleep(gap)  # (the pacing of the probe, not a wait for the broker)
        out[f"qos{qos} delivery"] = lat
        if ack:
            out[f"qos{qos} puback"] = ack
    pub.close()
    sub.close()
    return out


def pct(xs: list, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.hop_latency")
    ap.add_argument("--count", type=int, default=300, help="messages per QoS")
    ap.add_argument("--gap-ms", type=float, default=2.0, help="pause between messages")
    ap.add_argument("--link", choices=("grpc", "tcp", "direct"), default=None, help="SHOAL_CLUSTER_LINK of the nodes")
    ap.add_argument("--set", action="append", default=[], metavar="SHOAL_NAME=VALUE", help="one more node setting")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.set)
    if args.link:
        env["SHOAL_CLUSTER_LINK"] = args.link
    rows = []
    with tempfile.TemporaryDirectory(prefix="hoplat") as d, started_cluster(Path(d), ("n1", "n2"), env) as (_, nodes, mosq):
        rows.append(("shoal cross-node (n1 -> n2)", run(nodes[0].port, nodes[1].port, args.count, args.gap_ms / 1000, "x")))
        rows.append(("mosquitto", run(mosq.port, mosq.port, args.count, args.gap_ms / 1000, "m")))
    print(f"| broker | measure ({args.count} messages one at a time) | p50 ms | p90 ms | p99 ms |")
    print("|---|---|---:|---:|---:|")
    for label, res in rows:
        for key, xs in res.items():
            print(f"| {label} | {key} | {pct(xs, .5):.2f} | {pct(xs, .9):.2f} | {pct(xs, .99):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
