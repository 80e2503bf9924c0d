"""A node that cannot keep its lease stops acting as owner (issue 11).

etcd expires the node's lease TTL seconds after the last keep-alive it got; a
keep-alive this agent sent at time t (monotonic) therefore keeps the lease
until t + TTL at least. The agent tells its workers, after every keep-alive,
that they may serve until t + TTL - MARGIN (``LEASE``; the router passes it to the
workers on the ops channel, not behind the data path's routes). A worker past that time
(the agent is cut off from etcd, or the whole node was frozen by SIGSTOP or a
stall) disconnects every client (v5 DISCONNECT 0x9C, use another server: the
other nodes own these ids once the lease is gone) and refuses CONNECTs
(0x88 / 3) until a new ``LEASE`` comes, that is until the agent holds a lease
again. Its sessions stay in its store; the ones other nodes took meanwhile are
dropped on the next claim (their owner record names another node), and their
wills are the leader's to publish. SHOAL_CLUSTER_LEASE_LOSS=serve turns this off.
"""
from __future__ import annotations

import logging
import time

from common.logs import kv
from core import ops as o

log = logging.getLogger("shoal.agent")


class Fence:
    def __init__(self, agent):
        self.agent = agent
        self.until = 0.0
        ttl = agent.settings.cluster_lease_ttl
        self.margin = min(1.0, ttl / 4.0)

    @property
    def on(self) -> bool:
        return self.agent.settings.cluster_lease_loss == "disconnect"

    def holding(self) -> bool:
        return not self.on or time.monotonic() < self.until

    # A node that was never a member (etcd unreachable since its first start, or a wrong
    # SHOAL_ETCD_INITIAL_CLUSTER) serves its local clients alone, as issue 10 asks; it owns
    # nothing in etcd then, so such a node must not share client ids with a running cluster.
    # One that was (Settings.cluster_member_file) refuses claims until it holds a lease
    # (cluster/ownership.py, router/sessions.py).

    async def joined(self, client, sent: float) -> None:
        """Right after (re)joining: one keep-alive, so that the deadline is known."""
        reply = await client.refresh_lease(self.agent.lease_id)
        if reply is not None and reply.TTL > 0:
            self.kept(sent)

    def kept(self, sent: float) -> None:
        was = self.holding()
        self.until = sent + self.agent.settings.cluster_lease_ttl - self.margin
        if self.on:
            self.agent.link.queue(o.Lease(self.until, self.agent.lease_id))
            if not was:
                log.info("lease held: serving", extra=kv(lease=self.agent.lease_id))

    def resend(self) -> None:
        if self.on and self.until > time.monotonic():
            self.agent.link.queue(o.Lease(self.until, self.agent.lease_id))

    def lost(self) -> None:
        self.until = 0.0
        if self.on:
            log.warning("lease lost: clients disconnected until the node holds a lease again",
                        extra=kv(lease=self.agent.lease_id))
            self.agent.link.queue(o.Lease(None, self.agent.lease_id))
