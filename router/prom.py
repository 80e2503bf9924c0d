"""The node's figures in the Prometheus text format (prometheus_client).

Every figure comes twice: the node's value, ``shoal_<name>{node}``, and one
series per worker, ``shoal_worker_<name>{node, worker}``, whose values add up
to the node's (so a PromQL ``sum`` over either never counts twice). The
router's own figures are ``shoal_router_*``, the cluster link's
``shoal_cluster_*`` (the cluster agent's answer; zero while there is none).
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry
from prometheus_client.exposition import generate_latest

from core.sums import node_sums

# (snapshot key, metric name, help); counters get _total
COUNTERS = [
    ("connections_total", "connections_accepted", "TCP connections accepted"),
    ("messages_received", "packets_received", "MQTT packets received"),
    ("messages_sent", "packets_sent", "MQTT packets sent"),
    ("bytes_received", "bytes_received", "bytes received from clients"),
    ("bytes_sent", "bytes_sent", "bytes sent to clients"),
    ("protocol_errors", "protocol_errors", "connections closed for a protocol error"),
    ("store_writes", "store_writes", "writes to the LevelDB store (batches, or single writes with sync=always)"),
    ("store_errors", "store_errors", "failed store writes"),
    ("sessions_moved_in", "sessions_moved_in", "sessions handed to this worker by another worker"),
    ("link_sends", "router_link_sends", "ZeroMQ sends from the worker to the router (each a batch)"),
    ("link_pauses", "router_link_pauses", "times the worker stopped reading its clients because the router could not take more"),
    ("link_forwarded", "router_link_forwarded_messages", "publishes the worker sent to the router for other workers"),
    ("link_delivered", "router_link_delivered_messages", "publishes the router delivered to the worker"),
    # authentication and limits (issue 12)
    ("auth_delayed", "auth_delayed_connects", "CONNECTs held SHOAL_AUTH_FAIL_DELAY because their address failed before"),
    ("auth_bans", "auth_address_bans", "addresses refused for SHOAL_AUTH_BAN_TIME after failed logins"),
    ("auth_cache_hits", "auth_cache_hits", "logins verified from the cache, no hash computed"),
    ("publish_throttled", "publish_rate_pauses", "times a client's reading paused for SHOAL_MAX_PUBLISH_RATE"),
    ("subscribe_limit_pauses", "subscribe_limit_pauses", "times a SUBSCRIBE waited for room under SHOAL_MAX_FILTERS_WAITING"),
]
# (metric name, help, label, {label value: snapshot key})
LABELLED_COUNTERS = [
    ("publish_received", "PUBLISH packets received from clients", "qos", {str(q): f"publish_received_qos{q}" for q in range(3)}),
    ("publish_sent", "PUBLISH packets sent to clients", "qos", {str(q): f"publish_sent_qos{q}" for q in range(3)}),
    ("dropped_messages", "messages dropped or refused, by cause", "cause", {
        "qos0_slow_subscriber": "dropped_qos0",
        "queue_full": "dropped_queue_full",
        "expired": "dropped_expired",
        "too_large_for_client": "dropped_too_large",
        "store_full": "dropped_store_full",
        "not_authorized": "dropped_not_authorized",
        "retained_limit": "dropped_retained_limit",
    }),
    ("connects_refused", "CONNECTs refused by authentication and limits, by cause", "cause", {
        "bad_credentials": "auth_failures",  # 0x86, and 0x87 for anonymous clients when not allowed
        "address_banned": "auth_refused_banned",
        "password_queue_full": "auth_busy",
        "max_connections": "refused_max_connections",
    }),
    ("takeovers", "live connections displaced by a CONNECT with the same client id", "where", {
        "same_worker": "takeovers_local",
        "other_worker": "takeovers_remote",
    }),
]
GAUGES = [
    ("clients_connected", "connections", "open connections"),
    ("sessions", "sessions", "sessions (connected and offline)"),
    ("sessions_offline", "sessions_offline", "persistent sessions without a connection"),
    ("subscriptions", "subscriptions", "subscriptions"),
    ("queued_messages", "queued_messages", "messages queued for sessions (offline, or behind a full window; queues not yet read from the store are not counted)"),
    ("store_failed", "store_failed", "1 while the store refuses writes (disk full)"),
    ("link_backlog", "router_link_backlog", "ops waiting to be sent to the router"),
    ("link_blocked", "router_link_blocked", "1 while the worker is paused by the router's backlog"),
    ("link_unconfirmed", "router_link_unconfirmed", "QoS 1/2 publishes sent to the router and not yet owned by every receiver"),
]
INFLIGHT = {"out": "inflight_out", "in": "inflight_in"}
# snapshot keys rendered in some other way (or sums of others)
RENDERED = ({k for k, _, _ in COUNTERS} | {k for k, _, _ in GAUGES} | set(INFLIGHT.values())
            | {k for _, _, _, values in LABELLED_COUNTERS for k in values.values()}
            | {"publish_received", "publish_sent", "uptime", "retained", "takeover_seconds", "serving",
               "link_route_version"})  # (a version: the router's shoal_router_route_version is the node's)


def _value(snap: dict, key: str) -> float:
    v = snap.get(key, 0)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


class _Figures:
    def __init__(self, node: str, workers: dict, expected: list[str], router: dict, cluster: dict | None):
        self.node = node
        self.workers = workers  # name -> (snapshot, fresh)
        self.expected = expected
        self.router = router
        self.cluster = cluster

    def collect(self):
        node = self.node
        per = {name[1:]: snap for name, (snap, _) in sorted(self.workers.items()) if name.startswith("w")}
        sums = node_sums(per.values())

        def pair(kind, name, doc, key=None, label=None, values=None):
            fam_n = kind(f"shoal_{name}", doc, labels=["node"] + ([label] if label else []))
            fam_w = kind(f"shoal_worker_{name}", doc + " (one worker)", labels=["node", "worker"] + ([label] if label else []))
            if label is None:
                fam_n.add_metric([node], _value(sums, key))
                for wid, snap in per.items():
                    fam_w.add_metric([node, wid], _value(snap, key))
            else:
                for lv, k in values.items():
                    fam_n.add_metric([node, lv], _value(sums, k))
                    for wid, snap in per.items():
                        fam_w.add_metric([node, wid, lv], _value(snap, k))
            return fam_n, fam_w

        for key, name, doc in COUNTERS:
            yield from pair(CounterMetricFamily, name, doc, key)
        for name, doc, label, values in LABELLED_COUNTERS:
            yield from pair(CounterMetricFamily, name, doc, label=label, values=values)
        for key, name, doc in GAUGES:
            yield from pair(GaugeMetricFamily, name, doc, key)
        yield from pair(GaugeMetricFamily, "inflight_messages", "QoS 1/2 messages in flight", label="direction", values=INFLIGHT)
        # any other figure a worker reports (added later, not named above) still shows, untyped
        taken = {n for _, n, _ in COUNTERS + GAUGES} | {n for n, *_ in LABELLED_COUNTERS} | {"inflight_messages"}
        others = sorted({k for snap in per.values() for k, v in snap.items()
                         if k not in RENDERED and isinstance(v, (int, float)) and not isinstance(v, bool)})
        for key in others:
            if key.isidentifier() and key not in taken and not key.endswith(("_total", "_bucket", "_count", "_sum")):
                yield from pair(GaugeMetricFamily, key, f"worker figure {key}", key)

        # retained messages: every worker holds the node's whole set (a copy each)
        fam = GaugeMetricFamily("shoal_retained_messages", "retained messages of the node (incl. $SYS)", labels=["node"])
        fam.add_metric([node], max([_value(s, "retained") for s in per.values()] or [0]))
        yield fam
        fam = GaugeMetricFamily("shoal_uptime_seconds", "seconds since the oldest worker started", labels=["node"])
        fam.add_metric([node], _value(sums, "uptime"))
        yield fam

        hn = HistogramMetricFamily("shoal_takeover_seconds",
                                   "CONNECT to CONNACK-ready time of a CONNECT that took a session over "
                                   "(displaced a connection on its worker, or received a session from another worker)",
                                   labels=["node"])
        hw = HistogramMetricFamily("shoal_worker_takeover_seconds", "takeover latency (one worker)", labels=["node", "worker"])
        total = None
        for wid, snap in per.items():
            h = snap.get("takeover_seconds")
            if not h:
                continue
            bounds, counts, s = h
            hw.add_metric([node, wid], _buckets(bounds, counts), s)
            if total is None:
                total = [bounds, list(counts), s]
            else:
                total[1] = [a + b for a, b in zip(total[1], counts)]
                total[2] += s
        if total is not None:
            hn.add_metric([node], _buckets(total[0], total[1]), total[2])
        yield hn
        yield hw

        up = GaugeMetricFamily("shoal_worker_up", "1 when the worker answered this scrape; 0: its last figures (or none)",
                               labels=["node", "worker"])
        for name in self.expected:
            entry = self.workers.get(name)
            up.add_metric([node, name[1:]], 1 if entry is not None and entry[1] else 0)
        yield up
        fam = GaugeMetricFamily("shoal_workers", "workers the node runs (SHOAL_WORKERS)", labels=["node"])
        fam.add_metric([node], len(self.expected))
        yield fam

        h = self.router.get("handover_seconds")
        fam = HistogramMetricFamily("shoal_router_handover_seconds",
                                    "a session claim that another worker of the node answered: CLAIM to GRANT, "
                                    "taking over a live connection or moving an offline session", labels=["node"])
        if h:
            fam.add_metric([node], _buckets(h[0], h[1]), h[2])
        yield fam
        for key, (kind, doc) in ROUTER.items():
            fam = kind(f"shoal_router_{key}", doc, labels=["node"])
            fam.add_metric([node], self.router.get(key, 0))
            yield fam

        fam = GaugeMetricFamily("shoal_cluster_enabled", "1 when a cluster agent is a member of this node", labels=["node"])
        fam.add_metric([node], 1 if self.router.get("cluster_enabled") else 0)
        yield fam
        fam = GaugeMetricFamily("shoal_cluster_joined", "1 when the node has joined its cluster (0 when not clustered)",
                                labels=["node"])
        fam.add_metric([node], 1 if self.router.get("cluster_joined") else 0)
        yield fam
        fam = GaugeMetricFamily("shoal_cluster_peers", "other nodes of the cluster", labels=["node"])
        fam.add_metric([node], self.router.get("cluster_peers", 0))
        yield fam
        for key, v in sorted((self.cluster or {}).items()):  # the cluster link, as the agent reports it
            if isinstance(v, (int, float)) and not isinstance(v, bool) and key.isidentifier() \
                    and key not in ("enabled", "joined", "peers"):
                fam = GaugeMetricFamily(f"shoal_cluster_{key}", f"cluster agent figure {key}", labels=["node"])
                fam.add_metric([node], v)
                yield fam


ROUTER = {
    "forwarded_messages": (CounterMetricFamily, "publishes the router forwarded to a member"),
    "members": (GaugeMetricFamily, "live members of the router (workers with a data link, the cluster agent)"),
    "routes": (GaugeMetricFamily, "filters in the router's route table"),
    "route_version": (GaugeMetricFamily, "version of the route table"),
    "registered_sessions": (GaugeMetricFamily, "client ids in the router's session registry"),
    "pending_confirms": (GaugeMetricFamily, "QoS 1/2 publishes waiting for every receiver to own them"),
    "claims": (GaugeMetricFamily, "session claims (hand-overs) in progress"),
    "backlog": (GaugeMetricFamily, "ops waiting to be sent to members"),
    "retained_messages": (GaugeMetricFamily, "retained messages in the router's node-wide set"),
    "wire_refused": (CounterMetricFamily, "HELLOs and BEATs refused: the member speaks another WIRE_VERSION (core/ops.py)"),
    "malformed_ops": (CounterMetricFamily, "ops from members the router could not decode or handle, dropped"),
    "remote_repeats": (CounterMetricFamily, "QoS 1/2 messages from other nodes that came again (resent across an "
                                            "agent restart) and were taken once"),
    "peer_publishes": (CounterMetricFamily, "publishes other nodes' agents sent straight to this router "
                                            "(SHOAL_CLUSTER_LINK=direct), resent ones included"),
    "peer_refused": (CounterMetricFamily, "messages on the direct data port from a dialler that is not a Shoal agent "
                                          "of this data wire, dropped"),
    "peer_malformed": (CounterMetricFamily, "messages and publishes on the direct data port that were not ours, dropped"),
    # SHOAL_CLUSTER_ROUTER_SENDS (router/sender.py)
    "sender_sent": (CounterMetricFamily, "publishes this router sent to other nodes' routers, resent ones included"),
    "sender_resent": (CounterMetricFamily, "publishes sent again because the other node's router did not confirm them"),
    "sender_handed": (CounterMetricFamily, "publishes for other nodes handed to the agent (no data link, or fallen back)"),
    "sender_queued": (GaugeMetricFamily, "publishes waiting for other nodes' routers (queued and unconfirmed)"),
    "sender_dropped_qos0": (CounterMetricFamily, "QoS 0 publishes for other nodes dropped: that node's queue was full"),
    "sender_refused": (CounterMetricFamily, "QoS 1/2 publishes for other nodes refused: a full queue that only the "
                                           "agent could move while it was away (restarting)"),
    "sender_expired": (CounterMetricFamily, "publishes whose Message Expiry ran out while they waited for another node"),
    "sender_fallbacks": (CounterMetricFamily, "data links that had no connection for SHOAL_CLUSTER_DATA_FALLBACK_AFTER: "
                                             "their publishes went through the agent"),
    "sender_paused": (GaugeMetricFamily, "1 while a peer's queue is full and the router does not read its members"),
}


def _buckets(bounds, counts) -> list:
    out, acc = [], 0
    for b, c in zip(bounds, counts):
        acc += c
        out.append((repr(float(b)), acc))
    acc += counts[len(bounds)]
    out.append(("+Inf", acc))
    return out


def render(node: str, workers: dict, expected: list[str], router: dict, cluster: dict | None) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Figures(node, workers, expected, router, cluster))
    return generate_latest(reg)
