"""Counters of one worker; $SYS, /metrics and the node-wide sums are built from these."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from core.sums import TAKEOVER_BUCKETS, Histogram, node_sums  # noqa: F401  (shared with the router)


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
    moved_doubles_dropped: int = 0  # messages that reached a session just moved from another node twice (dropped)
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
    subscribe_limit_pauses: int = 0  # times a SUBSCRIBE waited for room under SHOAL_MAX_FILTERS_WAITING
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
