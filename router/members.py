"""Who is a member of the node's router: HELLO, silence, coming back.

A member (worker ``w<wid>``, the cluster agent ``agent``) registers with HELLO
and gets a WELCOME with the route table and the retained set; it pings every
second. Silent for MEMBER_TIMEOUT, it counts as gone: its routes leave the
table, the claims it was asked to answer go on without it. When it speaks
again it is revived: its routes come back, it gets a new WELCOME, and it drops
the sessions granted elsewhere meanwhile.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from common.logs import kv
from core import ops as o

log = logging.getLogger("shoal.router")

MEMBER_TIMEOUT = 3.0  # seconds without a PING before a member counts as gone
SETTLE_TIMEOUT = 3.0  # seconds after start that publishes wait for every worker to (re-)register
AGENT = b"agent"  # the cluster agent's identity (cluster/routerlink.py)


@dataclass(slots=True)
class Member:
    ident: bytes
    name: str
    count: int = 0  # filters it holds (the route table's trie says which)
    last_seen: float = 0.0
    alive: bool = True
    stats: dict = field(default_factory=dict)
    acked: int = 0  # route version this member has applied
    lost: list = field(default_factory=list)  # filters dropped when it fell silent (back if it speaks again)
    orphans: set = field(default_factory=set)  # client ids granted elsewhere while it was gone
    bye: bool = False  # it said it is done (the node is stopping)


class Membership:
    def __init__(self, router):
        self.r = router
        self.members: dict[bytes, Member] = {}
        self.by_name: dict[str, bytes] = {}  # member name -> ident (of members that added a route)
        self.started = router.clock()
        self.settled = False  # every worker registered (or SETTLE_TIMEOUT passed)
        self.deferred: list = []  # (ident, op) routed once settled

    def alive(self, ident: bytes) -> Member | None:
        m = self.members.get(ident)
        return m if m is not None and m.alive else None

    def workers(self) -> list[Member]:
        return [w for w in self.members.values() if w.alive and w.ident != AGENT and w.name.startswith("w")]

    def hello(self, ident: bytes, op: o.Hello, now: float) -> Member | None:
        r = self.r
        name = ident.decode(errors="replace")
        if not r.wire.accept(name, op.wire, "router"):
            self.gone(ident)  # (if an older process of it was registered)
            return None
        routes, sessions = r.routes, r.sessions
        old = self.members.get(ident)
        if old is not None:
            for flt in routes.member_filters(ident):
                routes.remove(old, flt)
            r.forward.forget_pending(ident)  # the member restarted: what it had not confirmed it never will
        m = Member(ident, name, last_seen=now)
        self.members[ident] = m
        for flt in op.filters:
            routes.add(m, flt)
        sessions.registered(ident, op.client_ids)
        for msg in op.retained or ():
            r.retained.retain(None, msg)
        table = routes.table(ident)
        # WELCOME carries the table as of the version after this member's own deltas
        routes.flush_delta()
        # the member has the table at this version (the WELCOME below); not one more:
        # a SYNC must wait for it to apply the next ROUTES
        m.acked = routes.version
        held = None
        if ident == AGENT and r.settings.clustered:
            # a new agent (the last one died, perhaps in the middle of a takeover another node
            # then finished without it): every id held here is confirmed in etcd again, at its
            # next claim and by the agent now (NOT_OURS for a copy another node owns)
            held = sorted(sessions.registry)
            sessions.unverified.update(held)
        r.send(ident, o.Welcome(r.epoch, routes.version, table, r.retained.wire(now), r.data_addr(ident), held))
        if sessions.lease_op is not None and ident != AGENT:
            if r.lease_path is not None:
                r.lease_path.push_lease(sessions.lease_op)  # (the ops channel: the only path then)
            else:
                r.send(ident, sessions.lease_op)
        log.info("member joined", extra=kv(member=m.name, filters=len(op.filters), sessions=len(op.client_ids)))
        self.check_settled(now)
        sessions.member_back(ident)
        return m

    def revive(self, m: Member) -> None:
        """A member taken for gone speaks again (it was only slow): its routes come
        back, it gets the whole table and retained set it missed (a new WELCOME),
        and it drops the sessions granted elsewhere meanwhile."""
        r = self.r
        m.alive = True
        log.warning("member back", extra=kv(member=m.name, filters=len(m.lost), orphans=len(m.orphans)))
        for flt in m.lost:
            r.routes.add(m, flt)
        m.lost = []
        r.routes.flush_delta()
        m.acked = r.routes.version
        now = r.clock()
        table = r.routes.table(m.ident)
        r.send(m.ident, o.Welcome(r.epoch, r.routes.version, table, r.retained.wire(now), r.data_addr(m.ident)))
        for cid in m.orphans:
            if r.sessions.registry.get(cid) != m.ident:
                r.send(m.ident, o.Takeover(cid, 0, True))
        m.orphans.clear()

    def gone(self, ident: bytes) -> None:
        """Killed, silent for MEMBER_TIMEOUT, or unreachable (the socket said so)."""
        r = self.r
        m = self.members.get(ident)
        if m is None or not m.alive:
            return
        m.alive = False
        log.warning("member silent, dropping its routes", extra=kv(member=m.name))
        r.sessions.holder_gone(m)
        r.forward.forget_pending(ident)
        if ident == AGENT and r.settings.cluster_lease_loss == "disconnect" and r.sessions.lease_op is not None:
            # issue 11: the other nodes' routes stay: with them dropped, a publish with subscribers
            # on other nodes was confirmed at once and never reached them (the chaos run's losses
            # after an agent SIGKILL). Such publishes now wait for the agent; a new agent refuses
            # them (0x97, its hello above), and the workers fence once the lease runs out
            r.out.pop(ident, None)
            return
        m.lost = r.routes.member_filters(ident)
        for flt in m.lost:
            r.routes.remove(m, flt)
        r.out.pop(ident, None)

    def check(self, now: float) -> None:
        # (measured up to the last time the router had read everything sent to it: a
        # member whose PING waits unread behind a backlog of route ops is not silent)
        upto = now if self.r.read_all_at is None else min(now, self.r.read_all_at)
        for ident, m in list(self.members.items()):
            if m.alive and upto - m.last_seen > MEMBER_TIMEOUT:
                self.gone(ident)

    def check_settled(self, now: float) -> None:
        """Route what waited for every worker of the node to register."""
        if self.settled:
            return
        workers = sum(1 for m in self.members.values() if m.alive and m.name.startswith("w"))
        if workers < self.r.settings.workers and now - self.started < SETTLE_TIMEOUT:
            return
        self.settled = True
        deferred, self.deferred = self.deferred, []
        log.info("route table complete", extra=kv(workers=workers, deferred=len(deferred)))
        for ident, op in deferred:
            if self.alive(ident) is not None:
                self.r.handle_op(ident, op, now)

    def all_done(self) -> bool:
        """Every member said BYE or is gone (a stopping cluster node's router may stop)."""
        return all(m.bye or not m.alive for m in self.members.values())
