"""The session registry: which member holds which client id, and the claims that move one.

A CONNECT on a worker claims its client id (CLAIM). Claims of one id queue up;
the head is in progress: the holder is asked to close its connection and hand
the session over (TAKEOVER, answered by HANDOFF), then the claimant gets it
(GRANT). In a cluster, a claim of an id this node does not (yet) own first asks
the agent to make the node its owner in etcd (OWN, answered by OWNED); the
agent also claims sessions off this node for another node's CONNECT, and hands
in sessions of a node that left (ADOPT).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from common.logs import kv
from core import ops as o
from core.ops import STALE, Own
from core.sums import Histogram

from .members import AGENT

log = logging.getLogger("shoal.router")

CLAIM_TIMEOUT = 5.0  # seconds a hand-over may take before the claimant gets an empty session
HOLDER_RESTART_WAIT = 8.0  # seconds a claim waits for the dead holder of a session to be restarted


@dataclass(slots=True)
class Claim:
    client_id: str
    req: int
    claimant: bytes
    clean_start: bool
    deadline: float
    since: float = 0.0  # when the claim came (hand-over latency, /metrics)
    owning: int = 0  # cluster: 1 while the agent makes this node the owner (OWN), 2 once it answered


def _filters(state) -> list:
    return [sub[0] for sub in state[4]]  # (the session record's subscriptions; core/records.py)


class Sessions:
    def __init__(self, router):
        self.r = router
        self.registry: dict[str, bytes] = {}  # client id -> member ident
        self.claims: dict[str, list[Claim]] = {}  # client id -> queue of claims, head in progress
        # cluster (issue 11): client ids restored from a worker's store, not yet confirmed as
        # this node's in etcd
        self.unverified: set[str] = set()
        self.lease_op: o.Lease | None = None  # the agent's last LEASE, for workers that register later
        # a node that was a cluster member before this start (Settings.cluster_member_file)
        # never decides alone: its client ids may be owned elsewhere by now
        st = router.settings
        self.member_before = st.clustered and st.cluster_member_file.exists()
        self.handover_seconds = Histogram()  # CLAIM to GRANT of the claims another worker answered (HANDOFF)

    # -- members coming and going -------------------------------------------------------
    def registered(self, ident: bytes, client_ids: list) -> None:
        """A member's HELLO lists the client ids it holds (from its store after a restart)."""
        members = self.r.members
        for cid in client_ids:
            holder = members.get(self.registry.get(cid, ident))
            if holder is not None and holder.ident != ident and holder.alive:
                # granted to another worker while this one was down: its copy is stale
                self.r.send(ident, o.Takeover(cid, 0, True))
            else:
                self.registry[cid] = ident
                if self.r.settings.clustered:
                    self.unverified.add(cid)  # from its store: etcd says whether it is still ours

    def member_back(self, ident: bytes) -> None:
        for queue in self.claims.values():
            c = queue[0]
            if self.registry.get(c.client_id) == ident and c.claimant != ident and c.owning != 1:
                # the holder restarted while a hand-over was asked of it: ask again
                self.r.send(ident, o.Takeover(c.client_id, c.req, c.clean_start))

    def holder_gone(self, m) -> None:
        """Member m is gone: the claims it was asked to answer go on without it."""
        for queue in list(self.claims.values()):
            c = queue[0]
            if self.registry.get(c.client_id) == m.ident and c.claimant != m.ident:
                self._holder_gone(c, m)  # its TAKEOVER will not be answered

    def released(self, ident: bytes, client_id: str) -> None:
        if self.registry.get(client_id) == ident:
            del self.registry[client_id]
            self._disown(client_id)

    # -- claims --------------------------------------------------------------------------
    def claim(self, ident: bytes, client_id: str, req: int, clean_start: bool, now: float) -> None:
        queue = self.claims.setdefault(client_id, [])
        queue.append(Claim(client_id, req, ident, clean_start, now + CLAIM_TIMEOUT, now))
        if len(queue) == 1:
            self._start_claim(queue[0])

    def _start_claim(self, c: Claim) -> None:
        owner = self.registry.get(c.client_id)
        if c.claimant == AGENT:
            self._agent_claim(c, owner)
            return
        if self._ask_agent(c, owner):
            return
        members = self.r.members
        if owner is None or owner == c.claimant or owner not in members:
            self._grant(c, None)
            return
        if not members[owner].alive:
            self._holder_gone(c, members[owner])
            return
        self.r.send(owner, o.Takeover(c.client_id, c.req, c.clean_start))

    def _holder_gone(self, c: Claim, holder) -> None:
        """The worker holding the claimed client id is gone (killed, or silent)."""
        if c.claimant == AGENT:
            self._orphan(holder, c.client_id)  # dropped if it speaks again; stale in its store if restarted
            self._agent_handoff(None, c, None)
            return
        if c.clean_start:
            # nothing of the old session is wanted: grant at once; the old holder
            # drops its copy when it is back (hello, revive)
            holder.orphans.add(c.client_id)
            self._grant(c, None)
        else:
            # the session is in that worker's store: wait for circus to restart it
            # (hello asks it again)
            c.deadline = max(c.deadline, self.r.clock() + HOLDER_RESTART_WAIT)

    def _grant(self, c: Claim, state, flag: int = Own.KEEP) -> None:
        if flag == Own.REFUSED:
            self.r.send(c.claimant, o.Grant(c.client_id, c.req, None, flag))
        else:
            if self.r.away.sessions:
                self.r.away.back(c.client_id)  # (it came back: served here again)
            self.registry[c.client_id] = c.claimant
            self.r.send(c.claimant, o.Grant(c.client_id, c.req, state, flag))
        self._next(c)

    def _next(self, c: Claim) -> None:
        """Claim c is done: the next claim of its id starts."""
        queue = self.claims.get(c.client_id)
        if queue and queue[0] is c:
            queue.pop(0)
            if queue:
                self._start_claim(queue[0])
            else:
                del self.claims[c.client_id]

    def handoff(self, ident: bytes, client_id: str, req: int, state) -> None:
        queue = self.claims.get(client_id)
        if not queue or queue[0].req != req:
            return  # a late answer to a claim that timed out
        if queue[0].claimant == AGENT:
            self._agent_handoff(ident, queue[0], state)
            return
        claimant = self.r.members.get(queue[0].claimant)
        self.handover_seconds.observe(self.r.clock() - queue[0].since)
        if state is not None and claimant is not None:
            # the session's routes move with it, before its old holder withdraws them
            for flt in _filters(state):
                self.r.routes.add(claimant, flt)
        self._grant(queue[0], state)
        if state is not None:
            # every DELIVER queued for the old holder before this mark was routed
            # without the new holder: those (only) it forwards to the session
            self.r.send(ident, o.Moved(client_id, _filters(state)))

    def check(self, now: float) -> None:
        """Claims past their deadline."""
        for queue in list(self.claims.values()):
            c = queue[0]
            if now >= c.deadline and c.claimant == AGENT:
                self._agent_handoff(None, c, None)
                continue
            if now >= c.deadline and c.owning == 1:
                log.warning("the agent did not answer a claim; refusing it", extra=kv(client=c.client_id))
                self._grant(c, None, Own.REFUSED)  # nobody knows who owns it: never two sessions
                continue
            if now >= c.deadline:
                log.warning("session hand-over timed out; granting an empty session",
                            extra=kv(client=c.client_id, claimant=c.claimant.decode()))
                holder = self.r.members.get(self.registry.get(c.client_id))
                if holder is not None and holder.ident != c.claimant:
                    holder.orphans.add(c.client_id)  # it drops its copy if it comes back
                self._grant(c, None)

    # -- sessions across the cluster (issue 11; the agent's side: cluster/ownership.py) ----------
    def _agent(self):
        return self.r.membership.alive(AGENT)

    def _ask_agent(self, c: Claim, holder: bytes | None) -> bool:
        """In a cluster, a claim of a client id this node does not hold (or holds only from
        its store) first makes this node its owner in etcd, through the agent."""
        st = self.r.settings
        if c.owning or c.claimant == AGENT or not st.clustered:
            return False
        if self._agent() is None:
            if st.cluster_lease_loss == "disconnect" and (self.lease_op is not None or self.member_before):
                self._grant(c, None, Own.REFUSED)  # the node held a lease: nobody can own it for us now
                return True
            return False  # no agent yet, and never a member: the node decides alone (issue 10)
        if holder is not None and holder in self.r.members and c.client_id not in self.unverified:
            return False  # held here, owned by this node: a hand-over between workers
        c.owning = 1
        self.r.send(AGENT, o.TakeOwnership(c.client_id, c.req, c.clean_start))
        return True

    def owned(self, client_id: str, req: int, verdict: int, state) -> None:
        queue = self.claims.get(client_id)
        if not queue or queue[0].req != req or queue[0].owning != 1:
            return  # a claim that timed out meanwhile
        c = queue[0]
        c.owning = 2
        if verdict == Own.KEEP:
            self.unverified.discard(client_id)
            self._start_claim(c)
            return
        if verdict == Own.REFUSED:
            self._grant(c, None, Own.REFUSED)
            return
        self.unverified.discard(client_id)
        holder = self.registry.get(client_id)
        if holder is not None and holder != c.claimant and holder in self.r.members:
            self.r.send(holder, o.Takeover(client_id, 0, STALE))  # its copy is stale: dropped
        if state is not None:
            claimant = self.r.members.get(c.claimant)
            if claimant is not None:
                for flt in _filters(state):
                    self.r.routes.add(claimant, flt)
        self._grant(c, state, Own.FRESH)

    def _agent_claim(self, c: Claim, holder: bytes | None) -> None:
        """The agent takes a session off this node (another node's CONNECT), in turn with
        this node's own claims of the id: the holder closes the connection (0x8E) and hands
        the session over; it leaves the node."""
        m = self.r.members.get(holder) if holder is not None else None
        if m is None or holder == AGENT or not m.alive:
            if m is not None and holder != AGENT:
                self._orphan(m, c.client_id)
            self._agent_handoff(None, c, None)
            return
        self.r.send(holder, o.Takeover(c.client_id, c.req, c.clean_start))

    def _orphan(self, m, client_id: str) -> None:
        """Another node takes client_id while its holder here is taken for gone: if the holder
        was only slow (a loaded or frozen host) and speaks again, it must close that client and
        drop its copy (revive), or the id had a live session on two nodes."""
        if self.registry.get(client_id) == m.ident:
            del self.registry[client_id]
        m.orphans.add(client_id)

    def _agent_handoff(self, ident: bytes | None, c: Claim, state) -> None:
        cid = c.client_id
        if ident is not None and self.registry.get(cid) == ident:
            del self.registry[cid]
        if state is not None and not c.clean_start:
            self.r.away.gone(cid, state, self.r.clock())  # what still comes here follows it
        self.unverified.discard(cid)
        self.r.send(AGENT, o.Grant(cid, c.req, state))
        self._next(c)

    def adopt(self, client_id: str, state) -> None:
        """A session from a node that left, now owned here: to the worker holding a copy
        (stale: replaced), else to the worker with the fewest sessions."""
        holder = self.registry.get(client_id)
        m = self.r.members.get(holder) if holder is not None else None
        if m is None or not m.alive or holder == AGENT:
            workers = self.r.membership.workers()
            if not workers:
                return
            counts: dict[bytes, int] = {}
            for ident in self.registry.values():
                counts[ident] = counts.get(ident, 0) + 1
            m = min(workers, key=lambda w: counts.get(w.ident, 0))
        self.registry[client_id] = m.ident
        self.unverified.discard(client_id)
        for flt in _filters(state):
            self.r.routes.add(m, flt)
        self.r.send(m.ident, o.Adopt(client_id, state))

    def not_ours(self, client_id: str) -> None:
        """The agent found client_id's owner record naming another node: the copy here is
        stale (this node's agent died while another node took the id over), and its holder
        drops it without its will (v5: its client gets DISCONNECT 0x8E). A claim of the id
        under way goes on instead: it asks etcd itself."""
        if client_id in self.claims:
            return
        holder = self.registry.get(client_id)
        m = self.r.members.get(holder) if holder is not None else None
        if m is None or holder == AGENT:
            return
        if not m.alive:
            self._orphan(m, client_id)  # (it drops its copy if it speaks again)
            return
        del self.registry[client_id]
        self.unverified.discard(client_id)
        log.warning("a session held here is owned by another node: dropped", extra=kv(client=client_id))
        self.r.send(holder, o.Takeover(client_id, 0, STALE))

    def _disown(self, client_id: str) -> None:
        if self.r.settings.clustered and client_id not in self.claims:
            if self._agent() is not None:
                self.r.send(AGENT, o.Disown(client_id))
