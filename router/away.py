"""Sessions this node handed to another node (issue 11 point 2): what still arrives
here for them follows them there.

When another node's CONNECT takes a session over (the agent's CLAIM, answered by the
holding worker's HANDOFF), the other nodes still route to this node for a while:
their tables learn of the new node's routes, and forget ours, through etcd, and what
they sent before is on its way. For ``SHOAL_CLUSTER_MOVE_WINDOW`` seconds after the
hand-over the router keeps the session's plain subscriptions here (``away``) and
gives every publish that matches one of them to the agent as a DELIVER_DIRECT for
that client id; the agent sends it to the node that took the session (it knows it
from the TakeoverSession call), where it goes straight to the session. A QoS 1/2
publish is confirmed to its sender only once that node owns the copy too.

A message can reach the new node both ways (routed there by its publisher's node,
and forwarded from here); every message carries an id given where it was published
(``mid``: the worker that read the PUBLISH gives it, worker/routing.py; the router
stamps what a member sent without one), and the new node's worker drops a second
delivery of one id to an arrived session (worker/moved.py ``arrived``). At most ``SHOAL_CLUSTER_MOVE_MAX_MESSAGES`` are
forwarded per moved session; beyond, dropped, counted and logged.
"""
from __future__ import annotations

import itertools
import logging

from common.logs import kv
from core import ops as o
from mqtt import SubscriptionTrie

from .members import AGENT

log = logging.getLogger("shoal.router")

AWAY_MEMBER = "away"  # the member name of the routes kept for moved sessions (no such process)


def marker(client_id: str) -> bytes:
    """The pending-confirmation entry of a publish's forwarded copy for client_id."""
    return b"\x00away:" + client_id.encode()


class Away:
    def __init__(self, router):
        self.r = router
        st = router.settings
        self.window = st.cluster_move_window
        self.max_messages = st.cluster_move_max_messages
        self.trie = SubscriptionTrie()  # filter -> client id (of a session gone to another node)
        self.sessions: dict[str, list] = {}  # client id -> [deadline, filters, forwarded]
        self.refs: dict[str, int] = {}  # filter -> moved sessions holding it (one "away" route each)
        # message ids: unique cluster-wide (the router's random epoch above a counter)
        self._mids = itertools.count((router.epoch & 0xFFFFFFFF) << 32)
        self.stamp = st.clustered
        self.forwarded = 0
        self.dropped = 0

    def mid(self) -> int:
        return next(self._mids)

    def __len__(self) -> int:
        return len(self.sessions)

    # -- a session went, or came back ---------------------------------------------
    def gone(self, client_id: str, state, now: float) -> None:
        """The agent took client_id's session for another node: follow it for the window."""
        self.back(client_id)
        filters = []
        for sub in state[4]:  # the session record's subscriptions (core/records.py)
            flt = sub[0]
            if flt.startswith("$share/"):
                continue  # a shared group picks another member
            self.trie.add(flt, client_id, sub)
            n = self.refs.get(flt, 0)
            self.refs[flt] = n + 1
            if n == 0:
                # the node keeps the route meanwhile (a route of the pseudo member "away" in the
                # ROUTES deltas: the agent keeps routes/<node>/<filter> in etcd, so the other
                # nodes go on sending here until they have the new node's route; the workers
                # send their own publishes for it to the router)
                self.r.routes.delta.append([1, AWAY_MEMBER, flt, None])
            filters.append(flt)
        if filters:
            self.sessions[client_id] = [now + self.window, filters, 0]

    def back(self, client_id: str) -> None:
        """client_id is claimed here again (or its window ended)."""
        entry = self.sessions.pop(client_id, None)
        if entry is not None:
            for flt in entry[1]:
                self.trie.remove(flt, client_id)
                n = self.refs.pop(flt, 1) - 1
                if n > 0:
                    self.refs[flt] = n
                else:
                    self.r.routes.delta.append([-1, AWAY_MEMBER, flt])

    def check(self, now: float) -> None:
        ended = []
        for cid, e in self.sessions.items():  # oldest first (each goes in at its hand-over): stop at a live one
            if now < e[0]:
                break
            ended.append(cid)
        for cid in ended:
            self.back(cid)

    # -- publishes -----------------------------------------------------------------
    def match(self, msg: list) -> dict | None:
        """{client id: [qos, retain as published, sub ids]} of the moved sessions msg is for."""
        matches = self.trie.match(msg[0])
        if not matches:
            return None
        origin = msg[6]
        agg: dict[str, list] = {}
        for cid, sub in matches:  # (a subscription record: filter, qos, no_local, rap, rh, sub_id)
            qos, no_local, rap, sid = sub[1], sub[2], sub[3], sub[5]
            if no_local and cid == origin:
                continue
            a = agg.get(cid)
            if a is None:
                agg[cid] = [qos, rap, [sid] if sid else []]
            else:
                a[0] = max(a[0], qos)
                a[1] = a[1] or rap
                if sid:
                    a[2].append(sid)
        return agg or None

    def forward(self, follows: dict, msg: list, ref: list | None) -> list:
        """To the agent, one DELIVER_DIRECT per moved session; returns the markers of the
        copies whose confirmation the publish waits for (with ref)."""
        waiting = []
        for cid, (qos, rap, ids) in follows.items():
            entry = self.sessions.get(cid)
            if entry is None:
                continue
            if entry[2] >= self.max_messages:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("moved session's forwarding limit reached: message dropped",
                                extra=kv(client=cid, topic=msg[0][:200], limit=self.max_messages, dropped=self.dropped))
                continue
            entry[2] += 1
            self.forwarded += 1
            qos = min(qos, msg[2])
            cref = None
            if ref is not None and qos:
                cref = [ref[0], ref[1], cid]
                waiting.append(marker(cid))
            self.r.send(AGENT, o.DeliverDirect(msg, cid, qos, bool(msg[3] and rap), sorted(ids), cref))
        return waiting

    def direct(self, msg: list, client_id: str, qos: int, retain: bool, sub_ids, ref: list | None = None) -> bool:
        """A message following a session that moved away, from the worker that held it (it
        had it before the hand-over, or it moved between this node's workers and has left
        the node since): on to the node that has it. ref: the agent answers DELIVERED ref
        once that node owns it. True: sent to the agent."""
        if client_id not in self.sessions:
            return False
        entry = self.sessions[client_id]
        if entry[2] >= self.max_messages:
            self.dropped += 1
            return False
        entry[2] += 1
        self.forwarded += 1
        self.r.send(AGENT, o.DeliverDirect(msg, client_id, qos, retain, list(sub_ids), ref))
        return True
