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
    # -- authentication and limits (issue 12) --
    auth_failures: int = 0  # CONNECTs refused for bad or missing credentials (0x86 / 0x87)
    auth_delayed: int = 0  # CONNECTs held SHOAL_AUTH_FAIL_DELAY because their address failed before
    auth_bans: int = 0  # addresses put on the refusal list
    auth_refused_banned: int = 0  # CONNECTs refused (0x8A) because their address is on the list
    auth_busy: int = 0  # CONNECTs refused (0x89) because the password check queue was full
    auth_cache_hits: int = 0  # logins verified from the cache (no hash computed)
    refused_max_connections: int = 0  # CONNECTs refused (0x97) past SHOAL_MAX_CONNECTIONS
    publish_throttled: int = 0  # times a client's reading paused for SHOAL_MAX_PUBLISH_RATE

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
