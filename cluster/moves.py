"""The agent's side of a session moving between nodes (issue 11 point 2; the router's
side is router/away.py).

On the node the session left (A): the router gives the agent what still arrives for
the moved client id (DELIVER_DIRECT); the agent sends it on the Link to the node that
took the session (B, named by its TakeoverSession call) as a Pub with ``direct`` set
(proto/cluster.proto), numbered like every QoS 1/2 publish on the link (sent again
after a reconnect, dropped by B if it has it already). A copy the router waits for
(``ref``) is confirmed to it once B acknowledged it.

On B: a direct Pub goes to the router as DIRECT for that client id (the router hands
it to the worker holding the session; the worker drops an id the session got
already). One that comes while B's claim of the id is still being decided (the
TakeoverSession answer and the Link are two streams) waits until the router has the
grant, so that it finds the session. B takes a direct message only from a node
whose TakeoverSession answer gave B that session, within the window (``took``); any
other is dropped, counted and logged: a node that handed a session nobody asked for
any more (a takeover request that reached it late, after a partition healed: its
fenced, stale copy) never has its messages delivered to the live session.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

import msgpack

from common.logs import kv
from core import ops as o

log = logging.getLogger("shoal.agent")

CLAIM_WAIT = 6.0  # seconds a direct message waits for this node's claim of its client id at most


class Moves:
    def __init__(self, agent):
        self.agent = agent
        # client id -> (node it went to, until); oldest first, so expired ones go from the front
        self.to: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.forwarded = 0
        self.received = 0
        self.lost = 0  # (the node it went to is gone)
        self.held: dict[str, list] = {}  # client id -> direct messages waiting for our claim of it
        # client id -> {node we took its session from: until}; oldest first, as ``to``
        self.came: OrderedDict[str, dict[str, float]] = OrderedDict()
        self.refused = 0  # direct messages from a node we did not take that session from (dropped)
        self.pending: dict[int, tuple] = {}  # our DIRECT token -> (Origin, seq, op): acked on CONFIRM

    # -- A: the session left -------------------------------------------------------
    def handed(self, client_id: str, node: str) -> None:
        now = time.monotonic()
        to = self.to
        to[client_id] = (node, now + self.agent.settings.cluster_move_window + 1.0)
        to.move_to_end(client_id)
        while to:  # (each entry goes once: a takeover storm costs O(1) per takeover here)
            first = next(iter(to.values()))
            if first[1] > now:
                break
            to.popitem(last=False)

    def on_direct(self, op: o.DeliverDirect) -> None:
        ag = self.agent
        cid = op.client_id
        entry = self.to.get(cid)
        node = entry[0] if entry is not None else None
        peer = ag.peers.get(node) if node is not None and node in ag.members else None
        if peer is None:
            self.lost += 1
            log.warning("message for a moved session dropped: its node is gone",
                        extra=kv(client=cid, peer=node, topic=op.msg[0][:200], lost=self.lost))
            if op.ref is not None:
                ag.link.queue(o.Delivered(op.ref))
            return
        key = None
        if op.ref is not None:
            key = tuple(op.ref)
            ag.refs[key] = {node}
        from proto import cluster_pb2 as pb

        direct = pb.Direct(client_id=cid, qos=op.qos, retain=bool(op.retain), sub_ids=[int(i) for i in op.sub_ids])
        peer.send(op.msg[0], msgpack.packb(op.msg, use_bin_type=True), False, [], key, op.qos, direct)
        self.forwarded += 1
        if peer.size() >= ag.settings.cluster_max_queued:
            ag.link.pause(True)

    # -- B: a message that followed a session here -----------------------------------
    def took(self, client_id: str, node: str) -> None:
        """Our claim of client_id got its session from node (TakeoverSession): what node
        forwards for it is taken for twice the window (the worker's dedup window)."""
        now = time.monotonic()
        came = self.came
        givers = came.setdefault(client_id, {})
        # (a session that went on and came back within the window: each giver's messages count)
        givers[node] = now + 2 * self.agent.settings.cluster_move_window + 1.0
        came.move_to_end(client_id)
        while came:  # (the front entry's newest giver is the oldest of all: expired ones go)
            first = next(iter(came.values()))
            if max(first.values()) > now:
                break
            came.popitem(last=False)

    def _from_giver(self, client_id: str, node: str) -> bool:
        until = self.came.get(client_id, {}).get(node)
        return until is not None and time.monotonic() < until

    def arrived(self, origin, p, w: list) -> None:
        if p.seq:
            st = origin.mark(p.seq)
            if st is True:
                origin.owned(p.seq)  # sent again after a reconnect: it is here already
                return
            if st is False:
                return  # still on its way to the router: the ack follows
        d = p.direct
        op = o.Direct(w, d.client_id, d.qos, d.retain, list(d.sub_ids))
        self.received += 1
        held = self.held.get(d.client_id)
        if held is not None:
            held.append((op, origin, p.seq))  # (behind the ones waiting for the claim, in order)
            return
        claim = self.agent.ownership.claiming.get(d.client_id)
        if claim is not None and not claim.done.is_set():
            self.held[d.client_id] = [(op, origin, p.seq)]
            self.agent.ownership._spawn_task(self._after_claim(d.client_id, claim))
            return
        self._give(op, origin, p.seq)

    async def _after_claim(self, client_id: str, claim) -> None:
        try:
            await asyncio.wait_for(claim.done.wait(), CLAIM_WAIT)
        except asyncio.TimeoutError:
            pass
        for op, origin, seq in self.held.pop(client_id, ()):
            self._give(op, origin, seq)

    def _give(self, op, origin, seq: int) -> None:
        if self._from_giver(op.client_id, origin.node):
            if seq and op.qos:
                # acknowledged to the node it came from once the router confirms: its worker
                # owns it, or the node the session went on to does (router/forward.py direct)
                op.token = next(self.agent.tokens)
                self.pending[op.token] = (origin, seq, op)
                self.agent.link.queue(op)
                return
            self.agent.link.queue(op)
        else:
            # not the node our claim took this session from (or past the window): that node
            # handed a copy nobody asked for any more (a late takeover request reached it;
            # its copy was fenced) and what it forwards is not this session's
            self.refused += 1
            log.warning("message for a moved session refused: not from the node it came from",
                        extra=kv(client=op.client_id, peer=origin.node, topic=op.msg[0][:200],
                                 came_from=",".join(sorted(self.came.get(op.client_id, ()))), refused=self.refused))
        if seq:
            origin.owned(seq)  # (acknowledged either way: nothing here will take it)
