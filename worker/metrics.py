"""Counters of one worker; $SYS, /metrics and the node-wide sums are built from these."""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field, fields


@dataclass(slots=True)
class Metrics:
    connections_total: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    dropped_qos0: int = 0  # QoS 0 dropped under overload (slow subscriber)
    dropped_queue_full: int = 0  # QoS 1/2 refused because a session queue was full
    dropped_expired: int = 0
    dropped_too_large: int = 0
    protocol_errors: int = 0
    dropped_store_full: int = 0  # QoS 1/2 refused (0x97) because the store could not write
    dropped_not_authorized: int = 0  # publishes the ACL refused
    dropped_retained_limit: int = 0  # retained messages refused by SHOAL_MAX_RETAINED_MESSAGES
    takeovers_local: int = 0  # a CONNECT here displaced a live connection of this worker
    takeovers_remote: int = 0  # a live connection here gave its client id to another worker
    sessions_moved_in: int = 0  # sessions handed to this worker by another worker
    # PUBLISH packets by QoS (index 0..2): one list index per message, summed in as_dict
    publish_received_qos: list = field(default_factory=lambda: [0, 0, 0])
    publish_sent_qos: list = field(default_factory=lambda: [0, 0, 0])
    # -- authentication and limits (issue 12) --
    auth_failures: int = 0  # CONNECTs refused for bad or missing credentials (0x86 / 0x87)
    auth_delayed: int = 0  # CONNECTs held SHOAL_AUTH_FAIL_DELAY because their address failed before
    auth_bans: int = 0  # addresses put on the refusal list
    auth_refused_banned: int = 0  # CONNECTs refused (0x8A) because their address is on the list
    auth_busy: int = 0  # CONNECTs refused (0x89) because the password check queue was full
    auth_cache_hits: int = 0  # logins verified from the cache (no hash computed)
    refused_max_connections: int = 0  # CONNECTs refused (0x97) past SHOAL_MAX_CONNECTIONS
    publish_throttled: int = 0  # times a client's reading paused for SHOAL_MAX_PUBLISH_RATE
    # TLS and WebSocket listeners (worker/tls.py, worker/websocket.py)
    tls_handshake_failures: int = 0  # failed or timed-out TLS handshakes
    ws_handshake_failures: int = 0  # refused or timed-out WebSocket upgrades
    ws_protocol_errors: int = 0  # text frames and frames wsproto could not parse

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.type == "int"}
        for name in ("publish_received", "publish_sent"):
            per = getattr(self, name + "_qos")
            d[name] = sum(per)
            for q in range(3):
                d[f"{name}_qos{q}"] = per[q]
        return d


# seconds from a CONNECT to its grant, when it took a session over (see Broker.claimed)
TAKEOVER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Fixed buckets; counts[i] counts values <= bounds[i] (not cumulative), the
    last one those above every bound."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds=TAKEOVER_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def as_wire(self) -> list:
        return [list(self.bounds), list(self.counts), self.sum]


def node_sums(snapshots) -> dict:
    """Node-wide figures from per-worker snapshots: counters add up, uptime is the
    longest. (Retained messages are one node-wide set: the caller sets that count.)"""
    sums: dict = {}
    for snap in snapshots:
        for k, v in snap.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                sums[k] = max(sums.get(k, 0), v) if k == "uptime" else sums.get(k, 0) + v
    return sums
