"""The node's HTTP interface: /metrics, /health, /ready and the admin API.

Served by the router (router/http.py) on the node's Unix socket
(``$SHOAL_RUN_DIR/shoal-<port>-admin.sock``, always) and on
``SHOAL_METRICS_HOST:SHOAL_METRICS_PORT`` when the port is set.

| path | answer |
|---|---|
| `GET /metrics` | Prometheus text; every worker is asked at scrape time (1 s deadline) |
| `GET /health` | 200 when the router and every worker beat within 3 s, else 503 |
| `GET /ready` | 200 when every worker serves (registered with the router), the route table is complete and (clustered) the node joined; else 503 |
| `GET /api/v1/nodes` | this node and the other nodes of its cluster (`api`: their admin URL) |
| `GET /api/v1/clients` `sessions` `subscriptions` `routes` | rows, each with `node` and `worker`; `?client=ID`, `?limit=N` (at most SHOAL_ADMIN_MAX_ROWS per worker) |
| `POST /api/v1/clients/<id>/kick` | closes the client's connection (v5: DISCONNECT 0x98) |

With SHOAL_ADMIN_TOKEN set, /api/... over TCP asks for ``Authorization:
Bearer <token>`` (the Unix socket is owner-only and needs none).
"""
from __future__ import annotations

import hmac
import json
import logging
import time

import zmq

from common.logs import kv
from core.version import VERSION

from . import prom
from .http import Request

log = logging.getLogger("shoal.router")

LISTS = ("clients", "sessions", "subscriptions", "routes")


def _json(obj) -> bytes:
    return (json.dumps(obj, default=str) + "\n").encode()


class AdminApp:
    def __init__(self, router, ops):
        self.router = router
        self.ops = ops
        self.settings = router.settings
        self.node = self.settings.node

    def __call__(self, req: Request, respond) -> None:
        now = time.monotonic()
        path = req.path.rstrip("/") or "/"
        if path.startswith("/api/"):
            token = self.settings.admin_token
            if token and not req.local:
                given = req.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    respond(401, _json({"error": "admin token required"}))
                    return
            self.api(req, path[len("/api/v1/"):] if path.startswith("/api/v1/") else None, respond, now)
            return
        if req.method not in ("GET", "HEAD"):
            respond(405, _json({"error": "GET only"}))
        elif path == "/metrics":
            self.metrics(respond, now)
        elif path == "/health":
            ok, detail = self.ops.health(now)
            respond(200 if ok else 503, _json({"status": "ok" if ok else "down", "node": self.node, **detail}))
        elif path == "/ready":
            ok, detail = self.ops.ready(now, self.router.settled or self.settings.workers == 1)
            respond(200 if ok else 503, _json({"status": "ready" if ok else "not ready", "node": self.node, **detail}))
        else:
            respond(404, _json({"error": "not found"}))

    # -- /metrics ----------------------------------------------------------------------
    def router_figures(self, now: float) -> dict:
        r = self.router
        return {
            "forwarded_messages": r.forward.forwarded,
            "members": sum(1 for m in r.members.values() if m.alive),
            "routes": r.routes.size(),
            "route_version": r.routes.version,
            "registered_sessions": len(r.sessions.registry),
            "pending_confirms": len(r.forward.pending),
            "claims": len(r.sessions.claims),
            "backlog": sum(len(ops) for ops in r.out.values()),
            "retained_messages": len(r.retained.messages),
            "wire_refused": r.wire.refused,
            "malformed_ops": r.malformed,
            "remote_repeats": r.forward.remote_repeats,
            # SHOAL_CLUSTER_LINK=direct (router/peerdata.py)
            "peer_publishes": r.peer_data.received if r.peer_data is not None else 0,
            "peer_refused": r.peer_data.refused if r.peer_data is not None else 0,
            "peer_malformed": r.peer_data.malformed if r.peer_data is not None else 0,
            # SHOAL_CLUSTER_ROUTER_SENDS (router/sender.py)
            **(r.sender.figures() if r.sender is not None else {}),
            "cluster_enabled": self.ops.cluster(now) is not None,
            "cluster_joined": bool(self.ops.cluster(now)),
            "cluster_peers": len(self.ops.peers),
            "handover_seconds": r.sessions.handover_seconds.as_wire(),
        }

    def metrics(self, respond, now: float) -> None:
        def gathered(figures: dict) -> None:
            cluster = figures.pop("agent", (None, False))[0] if "agent" in figures else None
            sender = self.router.sender
            if sender is not None and isinstance(cluster, dict):
                # SHOAL_CLUSTER_ROUTER_SENDS: the router's data links fall back, not the agent's
                # (the same figures, whichever process sends: router/sender.py)
                cluster = dict(cluster)
                cluster["data_fallbacks_total"] = cluster.get("data_fallbacks_total", 0) + sender.fallbacks
                cluster["data_fallen_back"] = cluster.get("data_fallen_back", 0) + sum(
                    1 for p in sender.peers.values() if p.fallen_back)
                cluster["data_links"] = cluster.get("data_links", 0) + sum(
                    1 for p in sender.peers.values() if p.link is not None)
            body = prom.render(self.node, figures, self.ops.worker_names(), self.router_figures(time.monotonic()), cluster)
            respond(200, body, "text/plain; version=0.0.4; charset=utf-8")

        self.ops.stats(gathered, now)

    # -- /api/v1 -------------------------------------------------------------------------
    def api(self, req: Request, what: str | None, respond, now: float) -> None:
        if what == "nodes" and req.method == "GET":
            respond(200, _json({"nodes": [self.this_node(now)] + list(self.ops.peers)}))
        elif what in LISTS and req.method == "GET":
            self.rows(what, req.query, respond, now)
        elif what and what.startswith("clients/") and what.endswith("/kick") and req.method == "POST":
            cid = what[len("clients/"):-len("/kick")]  # (the path is unquoted once, in http.parse)
            self.kick(cid, respond, now)
        elif what in LISTS or (what or "").startswith("clients/") or what == "nodes":
            respond(405, _json({"error": "method not allowed"}))
        else:
            respond(404, _json({"error": "not found"}))

    def this_node(self, now: float) -> dict:
        st = self.settings
        up = self.ops.up(now)
        workers = []
        for name in self.ops.worker_names():
            m = up.get(name)
            workers.append({"worker": int(name[1:]), "up": m is not None, "serving": bool(m and m.serving),
                            "pid": m.pid if m else None})
        api = f"http://{st.metrics_host or st.host}:{st.metrics_port}" if st.metrics_port else None
        ready, _ = self.ops.ready(now, self.router.settled or self.settings.workers == 1)
        return {"node": self.node, "self": True, "version": VERSION, "mqtt": f"{st.host}:{st.port}", "api": api,
                "workers": workers, "ready": ready, "cluster": self.ops.cluster(now)}

    def rows(self, what: str, query: dict, respond, now: float) -> None:
        args = {k: query[k] for k in ("client", "limit") if k in query}

        def gathered(answers: dict) -> None:
            rows, total, truncated, missing = [], 0, False, []
            for name in sorted(answers, key=lambda n: int(n[1:])):
                a = answers[name]
                if not isinstance(a, dict) or "rows" not in a:
                    missing.append(int(name[1:]))
                    continue
                for row in a["rows"]:
                    row["node"] = self.node
                    rows.append(row)
                total += a["total"]
                truncated = truncated or a["truncated"]
            if what == "routes":
                rows += self.other_routes()
            respond(200, _json({"node": self.node, what: rows, "total": total, "truncated": truncated,
                                "workers_missing": missing}))

        self.ops.ask(what, args, gathered, now)

    def other_routes(self) -> list:
        """Routes of router members that are not workers (the cluster agent's: other nodes' filters)."""
        out = []
        for m in self.router.members.values():
            if m.alive and not m.name.startswith("w"):
                out += [{"filter": f, "member": m.name, "node": self.node}
                        for f in self.router.routes.member_filters(m.ident)]
        return out

    def kick(self, cid: str, respond, now: float) -> None:
        def gathered(answers: dict) -> None:
            for name, a in answers.items():
                if isinstance(a, dict) and a.get("kicked"):
                    respond(200, _json({"node": self.node, "client": cid, "kicked": True, "worker": a["worker"],
                                        "address": a.get("address")}))
                    return
            respond(404, _json({"node": self.node, "client": cid, "kicked": False, "error": "no such connected client"}))

        self.ops.ask("kick", {"client": cid}, gathered, now)


class OpsService:
    """The ops channel, the HTTP listeners and the app, on the router's poller."""

    def __init__(self, router, poller):
        from .http import HttpServer
        from .ops import Ops

        st = router.settings
        self.ops = Ops(st, router.wire)
        self.ops.bind()
        poller.register(self.ops.sock, zmq.POLLIN)
        self.http = HttpServer(AdminApp(router, self.ops), st.admin_max_request, st.admin_max_connections)
        self.http.listen_unix(str(st.admin_socket))
        if st.metrics_port:
            host = st.metrics_host or st.host
            try:
                self.http.listen_tcp(host, st.metrics_port)
            except OSError as e:
                # the node serves MQTT without it; /health on that port stays unanswered
                log.error("cannot listen for metrics", extra=kv(host=host, port=st.metrics_port, error=str(e)))
        self.http.register(poller)

    def poll(self, events: dict, now: float) -> None:
        if self.ops.sock in events:
            self.ops.readable(now)
        if self.ops.pending:
            self.ops.check(now)
        self.http.events(events, now)

    def close(self) -> None:
        self.http.close()
        self.ops.close()
