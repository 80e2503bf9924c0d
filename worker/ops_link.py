"""The worker's side of the ops channel: health beats and admin answers.

Apart from the data path (router_link.py) and present with one worker too: a
DEALER socket (identity ``w<wid>``) to the router's ops socket
(``Settings.ops_endpoint``). Every second it sends a BEAT (the router's
/health and /ready read them); it answers the router's ASKs (the figures for
/metrics, the lists shoalctl shows, a kick). Nothing here runs per message:
the figures are read from the counters when asked.
"""
from __future__ import annotations

import logging
import os
import time

from common.logs import kv
from core import ops as o
from core.ops import WIRE_VERSION
from core.opschannel import OpsChannel
from mqtt import ReasonCode

log = logging.getLogger("shoal.ops")

BEAT_INTERVAL = 1.0
LINK_FIGURES = ("link_sends", "link_pauses", "link_forwarded", "link_delivered")


class OpsLink(OpsChannel):
    def __init__(self, server):
        self.server = server
        self.broker = server.broker
        self.settings = server.settings
        self.worker_id = server.worker_id
        self.name = f"w{self.worker_id}"
        self.identity = self.name.encode()
        self.started = time.time()
        self._timer = None
        self.answers = {
            "stats": self.stats,
            "clients": self.clients,
            "sessions": self.sessions,
            "subscriptions": self.subscriptions,
            "routes": self.routes,
            "kick": self.kick,
        }

    # -- lifecycle ------------------------------------------------------------
    def connect(self) -> None:
        self.open(self.settings.ops_endpoint)
        self.beat()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.shut()

    def serving(self) -> bool:
        """Listening, not shutting down, and registered with the router when there
        are other workers."""
        bridge = self.broker.bridge
        return (self.server.server is not None and not self.server.stopping.is_set()
                and (not bridge.remote or bridge.epoch is not None))

    def beat(self) -> None:
        self.beat_once()
        self._timer = self.loop.call_later(BEAT_INTERVAL, self.beat)

    def beat_once(self) -> None:
        if self.sock is not None:
            self._send([o.Beat(self.name, os.getpid(), self.serving(), self.started, None, WIRE_VERSION)])

    def on_op(self, op) -> None:
        if op.__class__ is o.Lease:
            # the node's cluster lease comes on this channel, apart from the routes and
            # messages of the data path (router/ops.py says why)
            handle = getattr(self.broker.bridge, "handle", None)
            if handle is not None:
                handle(op)

    def answer(self, what: str, args: dict) -> dict:
        fn = self.answers.get(what)
        return fn(args) if fn is not None else {"error": f"unknown question {what!r}"}

    # -- answers ------------------------------------------------------------------
    def _limit(self, args: dict) -> int:
        try:
            n = int(args.get("limit") or self.settings.admin_max_rows)
        except (TypeError, ValueError):
            n = self.settings.admin_max_rows
        return max(1, min(n, self.settings.admin_max_rows))

    def _rows(self, rows, args: dict) -> dict:
        """At most `limit` rows, and how many there were."""
        limit = self._limit(args)
        out, total = [], 0
        for row in rows:
            total += 1
            if len(out) < limit:
                out.append(row)
        return {"rows": out, "total": total, "truncated": total > len(out)}

    def _sessions(self, args: dict):
        cid = args.get("client")
        if cid:
            s = self.broker.sessions.get(cid)
            return [s] if s is not None else []
        return list(self.broker.sessions.values())

    def stats(self, args: dict) -> dict:
        b = self.broker
        snap = b.sys_snapshot()
        queued = inflight = inflight_in = offline = 0
        for s in b.sessions.values():
            queued += len(s.queue)
            inflight += len(s.inflight)
            inflight_in += len(s.incoming_qos2)
            if s.conn is None:
                offline += 1
        snap.update(queued_messages=queued, inflight_out=inflight, inflight_in=inflight_in, sessions_offline=offline)
        st = b.store
        snap["store_writes"] = st.writes if st is not None else 0
        snap["store_errors"] = getattr(st, "errors", 0) if st is not None else 0
        snap["store_failed"] = int(bool(st is not None and st.failed))
        bridge = b.bridge
        if bridge.remote:
            for name, v in zip(LINK_FIGURES, bridge.figures):
                snap[name] = v
            snap["link_backlog"] = len(bridge.out)
            snap["link_blocked"] = int(bridge.blocked)
            snap["link_unconfirmed"] = len(bridge.unconfirmed)
            snap["link_route_version"] = bridge.route_version
            snap["link_registered"] = int(bridge.epoch is not None)
        snap["takeover_seconds"] = b.takeover_seconds.as_wire()
        snap["serving"] = self.serving()
        return snap

    def clients(self, args: dict) -> dict:
        rows = []
        for s in self._sessions(args):
            c = s.conn
            if c is None:
                continue
            rows.append({"client": s.client_id, "worker": self.worker_id, "protocol": c.version,
                         "keepalive": c.keepalive, "address": c.peer, "username": c.username,
                         "expiry": s.expiry_interval, "subscriptions": len(s.subscriptions),
                         "inflight": len(s.inflight), "queued": len(s.queue)})
        return self._rows(rows, args)

    def sessions(self, args: dict) -> dict:
        now = self.broker.now
        rows = []
        for s in self._sessions(args):
            rows.append({"client": s.client_id, "worker": self.worker_id, "connected": s.conn is not None,
                         "expiry": s.expiry_interval,
                         "expires_in": None if s.expires_at is None else max(0, round(s.expires_at - now)),
                         "subscriptions": len(s.subscriptions), "inflight": len(s.inflight),
                         "queued": None if s.queue_stored else len(s.queue)})
        return self._rows(rows, args)

    def subscriptions(self, args: dict) -> dict:
        def rows():
            for s in self._sessions(args):
                for flt, o in s.subscriptions.items():
                    yield {"client": s.client_id, "worker": self.worker_id, "filter": flt, "qos": o.qos,
                           "no_local": o.no_local, "retain_as_published": o.retain_as_published,
                           "retain_handling": o.retain_handling, "id": o.sub_id}
        return self._rows(rows(), args)

    def routes(self, args: dict) -> dict:
        rows = ({"filter": flt, "worker": self.worker_id, "sessions": n}
                for flt, n in self.broker._filter_refs.items())
        return self._rows(rows, args)

    def kick(self, args: dict) -> dict:
        """Close the client's connection: v5 gets DISCONNECT 0x98 (administrative
        action). The session stays as its expiry says; the will is published."""
        cid = args.get("client")
        s = self.broker.sessions.get(cid) if cid else None
        if s is None or s.conn is None:
            return {"kicked": False, "worker": self.worker_id}
        conn = s.conn
        log.info("client kicked by an administrator", extra=kv(client=cid, peer=conn.peer))
        conn.disconnect(ReasonCode.ADMINISTRATIVE_ACTION, "administrative action")
        return {"kicked": True, "worker": self.worker_id, "address": conn.peer}
