"""The node's route table: which member wants which filters, versioned.

Every change is a delta; the deltas of one loop pass become one ROUTES op with
the next version, sent to every live member. Members answer ROUTE_ACK with the
version they applied; a SYNC (a worker's SUBACK waits on it) is answered once
every other live member applied the version it was made at.
"""
from __future__ import annotations

from collections import deque

from core import ops as o
from mqtt import SubscriptionTrie

from .away import AWAY_MEMBER


class RouteTable:
    def __init__(self, router):
        self.r = router
        self.trie = SubscriptionTrie()  # filter -> member idents
        self.version = 0
        self.delta: list = []  # changes not yet sent: [+1, member, filter, since] | [-1, member, filter]
        # sender ident -> its SYNCs (token, version, deadline) waiting for members to apply routes
        self.syncs: dict[bytes, deque] = {}

    # Which member holds which filter is the trie alone (filter -> member idents): a dict of
    # filters per member beside it kept every filter's whole string as well, about 100 bytes
    # per route (1,000,000 routes: 100 MiB); a member keeps only its count. What needs one
    # member's filters (it registered again, went silent, the admin list) walks the trie.
    def add(self, m, flt: str, since: float | None = None) -> None:
        if not self.trie.add(flt, m.ident, True):
            return
        m.count += 1
        self.r.membership.by_name[m.name] = m.ident
        self.delta.append([1, m.name, flt, since])
        if since is not None and not flt.startswith("$share/"):
            self.r.forward.replay(m.ident, flt, since)

    def remove(self, m, flt: str) -> None:
        self.r.forward.share_weight.pop((m.ident, flt), None)
        if not self.trie.remove(flt, m.ident):
            return
        m.count -= 1
        self.delta.append([-1, m.name, flt])

    def member_filters(self, ident: bytes) -> list[str]:
        """The filters one member holds (a walk of the whole table)."""
        if not self.r.members.get(ident) or not self.r.members[ident].count:
            return []
        return [flt for flt, key in self.trie.pairs() if key == ident]

    def table(self, but: bytes) -> list:
        """[member name, filter] of every route of every member but `but` (a WELCOME), and
        the routes kept for sessions that moved to another node within their window (the
        pseudo member "away", router/away.py: a member that registers meanwhile, an agent or
        worker restarted, keeps them as the others do from the ROUTES deltas)."""
        members = self.r.members
        names = {i: m.name for i, m in members.items() if i != but}
        table = [[names[key], flt] for flt, key in self.trie.pairs() if key in names]
        away = self.r.away
        if away.refs:
            table.extend([AWAY_MEMBER, flt] for flt in away.refs)
        return table

    def flush_delta(self) -> None:
        """Turn the route changes so far into one versioned ROUTES op for every member."""
        if self.delta:
            self.version += 1
            op = o.Routes(self.version, self.delta)
            self.delta = []
            out = self.r.out
            for ident, m in self.r.members.items():
                if m.alive:
                    out.setdefault(ident, []).append(op)

    def acked(self, m, version: int, now: float) -> None:
        if version > m.acked:
            m.acked = version
        if self.syncs:
            self.check_syncs(now)

    def sync(self, ident: bytes, token, now: float) -> None:
        self.flush_delta()
        q = self.syncs.get(ident)
        if q is None:
            q = self.syncs[ident] = deque()
        q.append((token, self.version, now + self.r.sync_timeout))
        self.check_syncs(now, ident)

    def check_syncs(self, now: float, only: bytes | None = None) -> None:
        """Answer the SYNCs whose route version every other live member has applied.

        Called on every SYNC and ROUTE_ACK, with thousands waiting while clients
        subscribe in bulk (a worker pipelines them): what every other member applied
        is worked out once per call, not per SYNC, and each sender's SYNCs are in
        version and deadline order (both only grow), so each sender's queue is read
        only up to its first SYNC that cannot be answered yet: a call costs the SYNCs
        it answers plus one per sender. `only`: look at that sender's queue alone
        (a new SYNC changes nothing for the others)."""
        acked = [(i, m.acked) for i, m in self.r.members.items() if m.alive]
        inf = float("inf")
        anyone = min((a for _, a in acked), default=inf)  # for a sender that is not (or no longer) alive
        send = self.r.send
        for ident in ([only] if only is not None else list(self.syncs)):
            q = self.syncs.get(ident)
            if not q:
                continue
            m = self.r.members.get(ident)
            if m is not None and m.alive:
                low = min((a for j, a in acked if j != ident), default=inf)
            else:
                low = anyone
            while q and (q[0][1] <= low or now >= q[0][2]):
                send(ident, o.Synced(q.popleft()[0]))
            if not q:
                del self.syncs[ident]

    def size(self) -> int:
        return sum(m.count for m in self.r.members.values() if m.alive)
