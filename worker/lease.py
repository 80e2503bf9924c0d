"""The worker's side of cluster/fence.py: serve only while the node holds its etcd lease."""
from __future__ import annotations

import logging

from common.logs import kv
from mqtt import ReasonCode

log = logging.getLogger("shoal.broker")


class LeaseGuard:
    def __init__(self, broker):
        self.broker = broker
        self.clock = broker.clock  # the worker's one clock (worker/timers.py): now and call_later
        self.until: float | None = None
        # a node that never held a lease (etcd unreachable since it started, or misconfigured)
        # serves its local clients as issue 10 says; once it held one, it never serves without
        self.fenced = False
        self.timer = None
        self.lease = 0  # the etcd lease served under (0: not known)

    def update(self, until: float | None, lease: int = 0) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        now = self.clock()
        log.debug("cluster lease news", extra=kv(left=None if until is None else round(until - now, 3)))
        if self.until is not None and now >= self.until:
            # the lease we served under ran out before this news came: when the whole node
            # was frozen (SIGSTOP) inside its poll, the news is read before the timer runs
            self.fence()
        if lease and self.lease and lease != self.lease and not self.fenced:
            # a new lease (a restarted agent found the old one expired): the owner records
            # of this node's clients went with the old one, and other nodes may own those
            # ids now; the clients reconnect and etcd decides (router: unverified)
            log.warning("cluster lease replaced: disconnecting the clients of the old one",
                        extra=kv(old=self.lease, new=lease))
            self.fence()
        if lease:
            self.lease = lease
        self.until = until
        if until is None or until <= now:
            self.fence()
            return
        if self.fenced:
            log.info("cluster lease held: accepting clients")
        self.fenced = False
        # (a process frozen inside its poll reads what waited before this runs: see above)
        self.timer = self.clock.call_later(until - now, self._due)

    def _due(self) -> None:
        self.timer = None
        now = self.clock()
        if self.until is None or now >= self.until:
            self.fence()
        else:
            # uvloop rounds timers to the millisecond and may run one a hair early: without
            # this the guard never fenced (found by the partition tests, issue 11)
            self.timer = self.clock.call_later(self.until - now + 0.001, self._due)

    def fence(self) -> None:
        if self.fenced:
            return
        self.fenced = True
        conns = list(self.broker.connections)
        log.warning("cluster lease lost: disconnecting clients (0x9C), refusing CONNECTs",
                    extra=kv(clients=len(conns)))
        for conn in conns:
            conn.disconnect(ReasonCode.USE_ANOTHER_SERVER, "this node lost its cluster lease")
