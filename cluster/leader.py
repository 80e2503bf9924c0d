"""One leader for the cluster-wide duties (issue 11).

The leader holds etcd's ``leader`` key, created with a compare-and-swap under a
lease of its own: half of SHOAL_CLUSTER_LEASE_TTL (at least 2 s), renewed at
every round. When the leader dies, or cannot keep that lease, the key goes with
it and the next node to try takes it. Every agent tries every
SHOAL_CLUSTER_LEASE_TTL / 4 seconds (at most 0.5 s), and at once when the watch
says the leader's node left, so another node leads within the lease TTL. (Under
the node's own lease the key went only when the whole TTL had run out, and then
etcd's expiry and the next round came on top: 4.6 to 6.6 s at TTL 5.) A leader
acts only while its renewals say it holds the key.
Every node publishes the leader's name as ``$SYS/broker/cluster/leader``
(retained).

Duties of the leader:
- the wills of nodes that are gone (wills/<client id> whose node holds no
  lease): each published once its will delay has passed since the leader saw
  the record orphaned (cluster/wills.py: a compare-and-swap delete decides who
  publishes). A new leader looks at every record again, so the duty goes on
  when the leader dies meanwhile.
- a dead node's sessions/owners/ and routes/ records go by themselves with its lease;
  its shared-subscription members are routes/ records too.
"""
from __future__ import annotations

import asyncio
import logging
import time

from common.logs import kv
from core import ops as o

from .wills import WILLS, decode

log = logging.getLogger("shoal.agent")

KEY = b"leader"
SCAN_EVERY = 2.0  # seconds between looks at wills/ while leader (and at once when a node left)


class Leader:
    def __init__(self, agent):
        self.agent = agent
        self.name: str | None = None  # the leader as last read
        self.leading = False
        self.since = 0.0
        self.orphans: dict[bytes, tuple[int, float]] = {}  # wills/ key -> (revision, due on our clock)
        self.last_scan = 0.0
        self.nodes_seen: frozenset = frozenset()
        self.wake = asyncio.Event()  # a round now (the leader's node left)
        self.lease_id = 0  # the leader key's own lease (0: none granted yet)
        self.held_until = 0.0  # our clock: the key is ours at least until then (while leading)

    @property
    def ttl(self) -> int:
        return max(2, -(-self.agent.settings.cluster_lease_ttl // 2))

    @property
    def interval(self) -> float:
        return min(0.5, self.agent.settings.cluster_lease_ttl / 4.0)

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            ag = self.agent
            client = ag.etcd.client
            if not ag.connected or client is None or not ag.lease_id:
                continue
            try:
                await self._round(client)
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
                # grpc.aio's answer for a call on a channel closed under it (cluster/etcd.py)
                log.warning("leader round failed", extra=kv(error="etcd channel closed"))
            except Exception as e:
                log.warning("leader round failed", extra=kv(error=(str(e) or type(e).__name__).splitlines()[0][:200]))

    async def _hold(self, client) -> int:
        """The leader key's lease, renewed (or granted anew when it lapsed); returns its id."""
        sent = time.monotonic()
        if self.lease_id:
            reply = await client.refresh_lease(self.lease_id)
            if reply is None or reply.TTL <= 0:
                self.lease_id = 0
        if not self.lease_id:
            self.lease_id = (await client.lease(self.ttl)).id
        self.held_until = sent + self.ttl - 0.5  # (a renewal sent at t holds it until t + TTL)
        return self.lease_id

    async def _round(self, client) -> None:
        ag = self.agent
        tx = client.transactions
        # a lease is held (renewed each round) only by the leader, or by a node that found the
        # key free: a follower's round stays one read of the key
        put = [tx.put(KEY, ag.node.encode(), await self._hold(client))] if self.leading else []
        ok, responses = await client.transaction(compare=[tx.create(KEY) == 0], success=put, failure=[tx.get(KEY)])
        if ok and not put:  # free: take it, under a lease of our own
            ok, responses = await client.transaction(
                compare=[tx.create(KEY) == 0], success=[tx.put(KEY, ag.node.encode(), await self._hold(client))],
                failure=[tx.get(KEY)])
        held = responses[0][0] if not ok and responses and responses[0] else None  # (value, meta)
        name = ag.node if ok else (held[0].decode() if held else None)
        # ours only under our own lease (a restarted agent's predecessor left it under its lease)
        mine = ok or (held is not None and name == ag.node and held[1].lease == self.lease_id)
        if name != self.name:
            self.name = name
            log.info("cluster leader", extra=kv(leader=name, me=name == ag.node))
            self.publish_sys()
        leading = bool(mine)
        if leading and not self.leading:
            self.since = time.monotonic()
            self.orphans.clear()
            self.last_scan = 0.0
        self.leading = leading
        if leading and time.monotonic() < self.held_until:
            await self.duties(client)

    def node_left(self, node: str) -> None:
        """A node's record went (its lease expired or was revoked): if it led, the leader key
        went in the same revision, and the next round may take it: now, not up to a poll later
        (measured: failover 5.3 to 6.6 s at TTL 5 with the poll alone)."""
        if node == self.name:
            self.wake.set()

    def publish_sys(self) -> None:
        w = ["$SYS/broker/cluster/leader", (self.name or "").encode(), 0, True, None, None, ""]
        self.agent.link.queue(o.Retain(w))
        self.agent.link.queue(o.Pub(w, None, None))

    async def duties(self, client) -> None:
        ag = self.agent
        now = time.monotonic()
        nodes = frozenset(ag.members)
        if nodes != self.nodes_seen or now - self.last_scan >= SCAN_EVERY:
            self.nodes_seen = nodes
            self.last_scan = now
            resp = await client.get_prefix(WILLS)
            present = set()
            for item in resp:
                rec = decode(item.value)
                if rec is None or rec[0] in ag.members:
                    continue
                present.add(item.key)
                old = self.orphans.get(item.key)
                if old is None or old[0] != item.mod_revision:
                    self.orphans[item.key] = (item.mod_revision, now + rec[2])
                    log.info("will of a node that is gone: due after its delay",
                             extra=kv(client=item.key[len(WILLS):].decode(errors="replace"), node=rec[0], delay=rec[2]))
            for k in [k for k in self.orphans if k not in present]:
                del self.orphans[k]
        for key, (rev, due) in list(self.orphans.items()):
            if now < due:
                continue
            del self.orphans[key]
            cur = await client.get(key)
            if cur is None or cur.mod_revision != rev:
                continue
            rec = decode(cur.value)
            if rec is None or rec[0] in ag.members:
                continue  # its node is back: it settles the will itself
            await ag.wills._delete_and_publish(client, key, rev, rec[1], key[len(WILLS):].decode(errors="replace"),
                                               "fired by the leader")
