"""Counters of one worker; $SYS and the node-wide sums are built from these."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Metrics:
    connections_total: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    publish_received: int = 0
    publish_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    dropped_qos0: int = 0  # QoS 0 dropped under overload (slow subscriber)
    dropped_queue_full: int = 0  # QoS 1/2 refused because a session queue was full
    dropped_expired: int = 0
    dropped_too_large: int = 0
    protocol_errors: int = 0
    dropped_store_full: int = 0  # QoS 1/2 refused (0x97) because the store could not write
    # TLS and WebSocket listeners (worker/tls.py, worker/websocket.py)
    tls_handshake_failures: int = 0  # failed or timed-out TLS handshakes
    ws_handshake_failures: int = 0  # refused or timed-out WebSocket upgrades
    ws_protocol_errors: int = 0  # text frames and frames wsproto could not parse

    def as_dict(self) -> dict:
        return asdict(self)


def node_sums(snapshots) -> dict:
    """Node-wide figures from per-worker snapshots: counters add up, uptime is the
    longest. (Retained messages are one node-wide set: the caller sets that count.)"""
    sums: dict = {}
    for snap in snapshots:
        for k, v in snap.items():
            if isinstance(v, (int, float)):
                sums[k] = max(sums.get(k, 0), v) if k == "uptime" else sums.get(k, 0) + v
    return sums
