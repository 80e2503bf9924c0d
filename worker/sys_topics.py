"""$SYS/broker/... figures, published as retained messages at an interval."""
from __future__ import annotations

from core.version import VERSION  # noqa: F401  (also read from here)

from .message import Message

# $SYS topic -> key of Broker.sys_snapshot()
TOPICS = {
    "uptime": "uptime",
    "clients/connected": "clients_connected",
    "clients/total": "sessions",
    "messages/received": "messages_received",
    "messages/sent": "messages_sent",
    "publish/messages/received": "publish_received",
    "publish/messages/sent": "publish_sent",
    "publish/messages/dropped": "dropped_qos0",
    "bytes/received": "bytes_received",
    "bytes/sent": "bytes_sent",
    "retained messages/count": "retained",
    "subscriptions/count": "subscriptions",
    "store/messages/dropped": "dropped_queue_full",
    "store/messages/refused": "dropped_store_full",  # QoS 1/2 refused (0x97): the store could not write
    # authentication and limits (issue 12)
    "auth/failures": "auth_failures",
    "auth/delayed": "auth_delayed",
    "auth/bans": "auth_bans",
    "auth/refused/banned": "auth_refused_banned",
    "auth/refused/busy": "auth_busy",
    "auth/cache hits": "auth_cache_hits",
    "clients/refused/max connections": "refused_max_connections",
    "publish/throttled": "publish_throttled",
    "tls/handshakes/failed": "tls_handshake_failures",
    "websocket/handshakes/failed": "ws_handshake_failures",
    "websocket/protocol_errors": "ws_protocol_errors",
}


def render(prefix: str, snap: dict) -> list[tuple[str, bytes]]:
    out = []
    for topic, key in TOPICS.items():
        value = snap.get(key)
        if value is None:
            continue
        text = f"{value} seconds" if key == "uptime" else str(value)
        out.append((f"{prefix}/{topic}", text.encode()))
    return out


def publish_version(broker) -> None:
    """The static $SYS topic, published when the worker starts (as mosquitto
    does) so that it is there before the first interval."""
    broker.publish(Message("$SYS/broker/version", VERSION.encode(), 0, True, {}, None, ""), local_only=True)


def publish_sys(broker, node_snapshot: dict | None = None) -> None:
    """Publish this worker's figures, and the node-wide ones when given."""
    snap = broker.sys_snapshot()
    now = broker.now
    items = [("$SYS/broker/version", VERSION.encode())]
    items += render(f"$SYS/broker/workers/{broker.worker_id}", snap)
    items += render("$SYS/broker", node_snapshot if node_snapshot is not None else snap)
    for topic, payload in items:
        broker.publish(Message(topic, payload, 0, True, {}, None, ""), local_only=True)


def snapshot(broker) -> dict:
    """This worker's figures (Broker.sys_snapshot): counters and the sizes of its tables."""
    m = broker.metrics.as_dict()
    m["clients_connected"] = len(broker.connections)
    m["sessions"] = len(broker.sessions)
    m["subscriptions"] = len(broker.subs)
    m["retained"] = len(broker.retained)
    m["uptime"] = int(broker.clock() - broker.started)
    return m


def routes_changed(broker, version: int) -> None:
    """The node's route table changed (version from the router): a $SYS figure tests await."""
    broker.route_version = version
    broker.publish(Message(f"$SYS/broker/workers/{broker.worker_id}/routes/version", str(version).encode(), 0, True,
                           {}, None, ""))
