"""The agent's side of SHOAL_CLUSTER_ROUTER_SENDS (the router's side: router/sender.py).

The router sends this node's publishes to the other nodes' routers itself; the agent only
tells it what it needs (core/ops.py): every other node it links to (PEER: data address,
agent instance, live or left; with its whole filter set when the agent (re)registers), then
the list of them (PEERS, after every full read of etcd), and each change of another node's
routes (PEER_ROUTE, after the agent's own ROUTE_ADD of a new filter and before its ROUTE_DEL,
so the router holds a node's route before the SYNC behind that node's SUBACK is answered).

What the router cannot send itself (no data address, or its data link had no connection
for SHOAL_CLUSTER_DATA_FALLBACK_AFTER) it hands here as PEER_PUB: this agent sends it on the
Link with the router's origin (the receiving router takes each origin once), and answers
DELIVERED [HANDED, token] once that node acknowledged it (or left).
"""
from __future__ import annotations

import logging

from core import ops as o
from core.peerdata import packb

log = logging.getLogger("shoal.agent")


class RouterSends:
    def __init__(self, agent):
        self.agent = agent
        self.handed = 0  # PEER_PUBs taken

    def _info(self, node: str, filters: list | None = None) -> o.PeerInfo:
        info = self.agent.members.get(node) or {}
        return o.PeerInfo(node, info.get("data") or None, str(info.get("instance", "")), True, filters)

    def peer_put(self, node: str) -> None:
        """A node the agent links to (new, or its record changed)."""
        self.agent.link.queue(self._info(node))

    def peer_gone(self, node: str) -> None:
        self.agent.link.queue(o.PeerInfo(node, None, "", False))

    def route(self, node: str, flt: str, add: bool, since: float | None = None) -> None:
        if not flt.startswith("$share/"):  # (shared groups stay the agent's: it picks the node)
            self.agent.link.queue(o.PeerRoute(node, flt, add, since))

    def hello(self) -> None:
        """After every WELCOME of the router (the agent registered, or the router took it for
        gone and back: its table has the agent's filters anew, the nodes of each not known):
        every peer with its whole filter set, and the list."""
        a = self.agent
        per: dict[str, list] = {node: [] for node in a.peers}
        for flt, node in a.trie.pairs():
            if node in per and not flt.startswith("$share/"):
                per[node].append(flt)
        for node, flts in per.items():
            a.link.queue(self._info(node, flts))
        if a.first_sync.is_set():
            self.synced()

    def synced(self) -> None:
        """etcd read whole: the nodes the agent links to are all the router's peers."""
        self.agent.link.queue(o.Peers(list(self.agent.peers)))

    def on_peer_pub(self, op: o.PeerPub) -> None:
        a = self.agent
        peer = a.peers.get(op.node)
        key = (o.HANDED, op.token) if op.token is not None else None
        if peer is None or op.node not in a.members:
            if key is not None:
                a.link.queue(o.Delivered(list(key)))  # that node left: nothing there will own it
            return
        msg = op.msg
        if key is not None:
            a.refs[key] = {op.node}
        self.handed += 1
        peer.send(msg[0], packb(msg), op.normal, op.groups, key, msg[2], msg=msg,
                  origin=op.origin if op.token is not None else None)
        a.forwarded += 1
        if peer.size() >= a.settings.cluster_max_queued:
            a.link.pause(True)
