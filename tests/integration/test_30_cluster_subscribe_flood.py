"""A SUBSCRIBE flood on one node of three (issue 10, "every queue between nodes is bounded"):
many connections each pipelining SUBSCRIBEs of many new filters, with a short lease TTL and
the lease guard on (SHOAL_CLUSTER_LEASE_LOSS=disconnect). What waits for routes is bounded
per connection (SHOAL_MAX_SUBSCRIBES_WAITING) and per worker (SHOAL_MAX_FILTERS_WAITING):
the node pushes back (stops reading connections) instead of queueing the whole flood in its
router, agent and etcd, so its lease keeps being renewed and its router's members keep
answering. Checked: no client is ever told to use another server (v5 DISCONNECT 0x9C), no
node logs a lost lease or a silent member, every SUBACK arrives granted, the bound pushed
back (its counter on /metrics), and a SUBACK still means routed on every node."""
from __future__ import annotations

import asyncio
import re
import time
import urllib.request

from mqtt import Connect, Disconnect, Framer, SubAck, Subscribe, Subscription, decode, encode
from tests.support.cluster import publish, receive, running_cluster, subscribe
from tests.support.node import free_port

CONNS = 150  # connections on the flooded node
PIPELINED = 8  # SUBSCRIBEs each connection sends before reading an answer
PER_PACKET = 25  # new filters per SUBSCRIBE
ROUNDS = 2  # PIPELINED SUBSCRIBEs per round, each round after the answers of the one before
TOTAL = CONNS * PIPELINED * PER_PACKET * ROUNDS  # 60,000 new filters


def flood(port: int, deadline: float) -> dict:
    """Each connection subscribes round after round (PIPELINED SUBSCRIBEs sent at once, then
    every SUBACK read); returns what came back: reason codes counted, DISCONNECTs, closes."""
    got = {"granted": 0, "refused": 0, "disconnects": [], "closed": 0}

    async def read_until(reader, framer, want, c) -> bool:
        """Read until `want` SUBACKs came (0: the CONNACK); False if the node closed or disconnected us."""
        seen = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"connection {c}: {seen} of {want} answers before the deadline")
            data = await asyncio.wait_for(reader.read(1 << 16), left)
            if not data:
                got["closed"] += 1
                return False
            for first, body in framer.feed(data):
                p = decode(first, body, 5)
                if isinstance(p, Disconnect):
                    got["disconnects"].append(p.reason_code)
                    return False
                if isinstance(p, SubAck):
                    seen += 1
                    for rc in p.reason_codes:
                        got["granted" if rc < 0x80 else "refused"] += 1
                elif want == 0:
                    return True  # the CONNACK
            if want and seen >= want:
                return True

    async def one(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        framer = Framer()
        writer.write(encode(Connect(client_id=f"flood-{c}", version=5, keepalive=0), 5))
        if not await read_until(reader, framer, 0, c):
            return
        for r in range(ROUNDS):
            base = r * PIPELINED * PER_PACKET
            writer.write(b"".join(
                encode(Subscribe(k + 1, [Subscription(f"flood/{c}/{base + k * PER_PACKET + i}", 1)
                                         for i in range(PER_PACKET)]), 5)
                for k in range(PIPELINED)))
            if not await read_until(reader, framer, PIPELINED, c):
                return
        writer.close()

    async def run() -> None:
        await asyncio.gather(*(one(c) for c in range(CONNS)))

    asyncio.run(run())
    return got


def metric(node, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.env['SHOAL_METRICS_PORT']}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf'^{name}\{{node="[^"]*"\}} (\S+)$', text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_a_subscribe_flood_is_pushed_back_and_the_node_keeps_its_lease(clients):
    # (at most 1,000 new filters waiting per worker, where the flood offers 30,000 at once)
    with running_cluster(["f1", "f2", "f3"], cluster_lease_ttl=3, cluster_lease_loss="disconnect",
                         metrics_port=free_port, max_filters_waiting=1000) as c:
        n1, n2, n3 = c.nodes
        marks = [n._log_size() for n in c.nodes]
        got = flood(n1.port, time.monotonic() + 240)
        logs = [n.log(since=m) for n, m in zip(c.nodes, marks)]
        for name, text in zip(("f1", "f2", "f3"), logs):
            assert "lease lost" not in text, f"{name} lost its lease during the flood:\n{text[-3000:]}"
            assert "member silent" not in text, f"{name}'s router took a member for dead:\n{text[-3000:]}"
        assert got["disconnects"] == [] and got["closed"] == 0, got
        assert (got["granted"], got["refused"]) == (TOTAL, 0), got
        # the per-worker bound pushed back: connections waited for room
        assert metric(n1, "shoal_subscribe_limit_pauses_total") > 0
        assert "SHOAL_MAX_FILTERS_WAITING" in logs[0]
        # and a SUBACK still means routed on every node: a subscription made now on f1 gets
        # what is published at once on f2 and f3
        sub = clients.connect(n1.port, "flood-check")
        subscribe(sub, "flood-check/#", 1)
        for n, name in ((n2, "f2"), (n3, "f3")):
            pub = clients.connect(n.port, f"flood-pub-{name}")
            assert publish(pub, f"flood-check/{name}", name.encode(), 1) == 0
        assert sorted(p.payload for p in receive(sub, 2)) == [b"f2", b"f3"]
