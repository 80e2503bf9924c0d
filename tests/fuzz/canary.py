"""The canary: two paho clients (one subscribes, one publishes) that move QoS 1
messages through the node under fuzz, all the time, and say which were lost.

A message is lost when its PUBACK came but it never reached the subscriber;
`unacked` counts publishes the node never acknowledged. Both must be 0.
"""
from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.node import wait_for


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Canary:
    def __init__(self, port: int, rate: float = 20.0, host: str = "127.0.0.1", transport: str = "tcp",
                 tls_ca: str | None = None, name: str = "tcp"):
        run = uuid.uuid4().hex[:12]
        self.name = name
        self.topic = f"fuzz-canary/{run}/{name}"
        self.period = 1.0 / rate
        self.lock = threading.Lock()
        self.sent_at: dict[int, float] = {}  # seq -> monotonic time of publish()
        self.acked: set[int] = set()
        self.received: dict[int, float] = {}  # seq -> latency seconds
        self.duplicates = 0
        self.foreign = 0
        self.disconnects = {"sub": 0, "pub": 0}
        self.subscribed = threading.Event()
        self.stop_flag = threading.Event()
        self.mid_seq: dict[int, int] = {}
        self.early_acks: set[int] = set()
        self.seq = 0
        self.sub = self._client(f"fuzz-canary-sub-{name}-{run}", "sub", transport, tls_ca)
        self.pub = self._client(f"fuzz-canary-pub-{name}-{run}", "pub", transport, tls_ca)
        self.sub.on_message = self._on_message
        self.sub.on_subscribe = lambda c, u, mid, rc, props: self.subscribed.set()
        self.pub.on_publish = self._on_publish
        self.host, self.port = host, port
        self.thread: threading.Thread | None = None

    def _client(self, cid: str, role: str, transport: str, tls_ca: str | None) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311,
                        transport="websockets" if transport == "ws" else "tcp")
        if transport == "ws":
            c.ws_set_options(path="/mqtt")
        if tls_ca:
            c.tls_set(ca_certs=tls_ca)
        c.max_inflight_messages_set(100)

        def on_disconnect(client, userdata, flags, rc, props, role=role):
            if not self.stop_flag.is_set():
                self.disconnects[role] += 1
        c.on_disconnect = on_disconnect
        return c

    def start(self) -> None:
        for c in (self.sub, self.pub):
            c.connect(self.host, self.port, keepalive=30)
            c.loop_start()
        wait_for(self.sub.is_connected, 20, what=f"canary {self.name} subscriber connected")
        wait_for(self.pub.is_connected, 20, what=f"canary {self.name} publisher connected")
        self.sub.subscribe(self.topic, qos=1)
        if not self.subscribed.wait(20):
            raise TimeoutError(f"canary {self.name}: no SUBACK")
        self.thread = threading.Thread(target=self._publish_loop, name=f"canary-{self.name}", daemon=True)
        self.thread.start()

    def _publish_loop(self) -> None:
        next_at = time.monotonic()
        while not self.stop_flag.is_set():
            with self.lock:
                self.seq += 1
                seq = self.seq
                self.sent_at[seq] = time.monotonic()
            # never hold self.lock inside paho: its network thread holds paho's locks when it
            # calls _on_publish, which takes self.lock (the two orders would deadlock)
            info = self.pub.publish(self.topic, str(seq).encode(), qos=1)
            with self.lock:
                if info.mid in self.early_acks:  # the PUBACK came before publish() returned
                    self.early_acks.discard(info.mid)
                    self.acked.add(seq)
                else:
                    self.mid_seq[info.mid] = seq
            next_at += self.period
            self.stop_flag.wait(max(0.0, next_at - time.monotonic()))  # the publishing pace, not a test wait

    def _on_publish(self, client, userdata, mid, rc, props) -> None:
        with self.lock:
            seq = self.mid_seq.pop(mid, None)
            if seq is not None:
                self.acked.add(seq)
            else:
                self.early_acks.add(mid)

    def _on_message(self, client, userdata, msg) -> None:
        now = time.monotonic()
        try:
            seq = int(msg.payload)
        except ValueError:  # not one of ours: counted as a duplicate would hide it, so it is its own figure
            self.foreign += 1
            return
        with self.lock:
            if seq in self.received:
                self.duplicates += 1
                return
            sent = self.sent_at.get(seq)
            self.received[seq] = now - sent if sent is not None else 0.0

    def finish(self, drain_timeout: float = 20.0) -> dict:
        """Stop publishing, wait for every acknowledged message to arrive (with a deadline), report."""
        self.stop_flag.set()
        if self.thread is not None:
            self.thread.join(5)

        def drained():
            with self.lock:
                return len(self.acked) == self.seq and self.acked <= self.received.keys()
        try:
            wait_for(drained, drain_timeout, 0.05, "canary drained")
        except TimeoutError:
            pass
        for c in (self.pub, self.sub):
            c.disconnect()
            c.loop_stop()
        with self.lock:
            lat = list(self.received.values())
            lost = sorted(self.acked - self.received.keys())
            return {
                "transport": self.name, "published": self.seq, "acked": len(self.acked),
                "received": len(self.received), "lost": len(lost), "lost_seqs": lost[:50],
                "unacked": self.seq - len(self.acked), "duplicates": self.duplicates, "foreign": self.foreign,
                "disconnects": dict(self.disconnects),
                "latency_ms": {"p50": _ms(_percentile(lat, 0.5)), "p99": _ms(_percentile(lat, 0.99)),
                               "max": _ms(max(lat) if lat else None)},
            }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)
