"""Publishes that raced a subscription made on another node.

On one node a publish read after a SUBSCRIBE reaches the subscriber even when
the route was still on its way: workers and router keep the last
REPLAY_WINDOW of publishes and replay them to the new route
(docs/architecture.md). Across nodes the same holds: the subscribing node writes
the moment its worker handled the SUBSCRIBE (wall-clock seconds) as the value of
the new ``routes/<node>/<filter>`` key, and the publishing node's agent, when its
watch brings that route, replays to that node

- what the agent itself sent to other nodes in the window and not to it (kept
  here, `recent`), and
- what its router and workers routed elsewhere or nowhere in the window: the
  agent sends its router the new filter with that moment (ROUTE_ADD with `since`),
  and they hand those publishes back marked with the filter and read time
  (DELIVER ... flt, at); they go to the nodes whose route for that filter is new
  (`fresh`), only those, so no node gets a message twice.

As on one node, a QoS 1/2 publish read before the SUBSCRIBE is never replayed (it
may have been acknowledged before the SUBSCRIBE arrived); a QoS 0 one read up to
REPLAY_MARGIN before it is. The moment crosses hosts as wall-clock time, so
between hosts the window is as good as their clocks agree (on one host, exact).
Retained messages are not replayed: new subscribers get them as retained.
"""
from __future__ import annotations

import time
from collections import deque

import msgpack

from mqtt import topic_matches

REPLAY_WINDOW = 0.5  # seconds of publishes the agent keeps (as workers and router do)
REPLAY_MARGIN = 0.05  # a QoS 0 publish read this long before a SUBSCRIBE counts as concurrent (as on one node)
FRESH_KEEP = 10.0  # seconds a new remote route stays "new" for replays handed back by the router


def wall_offset() -> float:
    """time.time() - time.monotonic(): turns one clock into the other."""
    return time.time() - time.monotonic()


def parse_since(value: bytes) -> float | None:
    """The monotonic moment (on this host) a routes/ value names, or None (no moment)."""
    if not value:
        return None
    try:
        return float(value) - wall_offset()
    except ValueError:
        return None


class Replay:
    def __init__(self, agent):
        self.agent = agent
        self.recent: deque = deque()  # (at, msg, nodes it went to), oldest first
        self.fresh: dict[str, dict[str, float]] = {}  # filter -> {node: moment of its SUBSCRIBE}
        self.fresh_order: deque = deque()  # (moment, filter, node) oldest first, to forget them in order
        self.local_since: dict[str, float] = {}  # this node's new filters -> moment, until written to etcd

    # -- this node's new filters ---------------------------------------------------
    def local_added(self, flt: str, since: float | None) -> None:
        if since is not None and not flt.startswith("$share/"):
            self.local_since[flt] = since

    def local_removed(self, flt: str) -> None:
        self.local_since.pop(flt, None)

    def route_value(self, flt: str) -> bytes:
        """The value of routes/<this node>/<flt>: the SUBSCRIBE's wall-clock moment, once."""
        since = self.local_since.pop(flt, None)
        return b"" if since is None else b"%.6f" % (since + wall_offset())

    # -- the publishing side ---------------------------------------------------------
    def sent(self, msg: list, nodes) -> None:
        """A publish this agent sent on to `nodes` (a normal, non-retained one)."""
        now = time.monotonic()
        recent = self.recent
        recent.append((now, msg, set(nodes)))
        if len(recent) > 256 and recent[0][0] < now - REPLAY_WINDOW:
            while recent and recent[0][0] < now - REPLAY_WINDOW:
                recent.popleft()

    def route_added(self, node: str, flt: str, since: float | None) -> None:
        """Another node's new route: what this agent sent elsewhere since goes to it too."""
        if since is None or flt.startswith("$share/"):
            return
        fresh, order = self.fresh, self.fresh_order
        old = time.monotonic() - FRESH_KEEP
        while order and order[0][0] < old:
            _, f, n = order.popleft()
            nodes = fresh.get(f)
            if nodes is not None and n in nodes and nodes[n] < old:
                del nodes[n]
                if not nodes:
                    del fresh[f]
        fresh.setdefault(flt, {})[node] = since
        order.append((since, flt, node))
        early = since - REPLAY_MARGIN
        for at, msg, nodes in reversed(self.recent):
            if at < early:
                break
            if at < since and msg[2]:
                continue
            if node not in nodes and topic_matches(flt, msg[0]):
                nodes.add(node)
                self._send(node, msg)

    def route_removed(self, node: str, flt: str) -> None:
        nodes = self.fresh.get(flt)
        if nodes is not None:
            nodes.pop(node, None)
            if not nodes:
                del self.fresh[flt]

    def replayed(self, msg: list, flt: str, at: float) -> None:
        """A publish the router or a worker hands back for a new filter (it went to no
        node): to the nodes whose route for that filter is newer than its read."""
        nodes = self.fresh.get(flt)
        if not nodes:
            return
        me = self.agent.node
        members = self.agent.members
        went = set()
        for node, since in nodes.items():
            if node == me or node not in members:
                continue
            if at < since - REPLAY_MARGIN or (at < since and msg[2]):
                continue
            went.add(node)
            self._send(node, msg)
        if went:
            self.sent(msg, went)

    def _send(self, node: str, msg: list) -> None:
        peer = self.agent.peers.get(node)
        if peer is not None:
            peer.send(msg[0], msgpack.packb(msg, use_bin_type=True), True, [], None, msg[2])
            self.agent.forwarded += 1
