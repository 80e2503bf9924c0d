"""SUBSCRIBEs waiting for their routes: bounded per connection and per worker.

A SUBACK is sent once every other member of the node (the other workers, and
through the cluster agent every other node) routes the new filters here
(handlers.handle_subscribe). Until then the SUBSCRIBE waits. Two bounds keep
what waits, and so the work queued behind it in router, agent and etcd, finite:

- per connection, SHOAL_MAX_SUBSCRIBES_WAITING: a client may pipeline that many
  SUBSCRIBEs; each is handled at once (the subscription holds locally, its
  route goes out) and their SUBACKs go in order as their routes are in. At the
  bound, or when a packet other than SUBSCRIBE follows one that waits, the
  connection is not read (flow.Pause.SUBSCRIBING) and what it sent after waits
  until the SUBACKs before it went (so an UNSUBSCRIBE, a PUBLISH, a DISCONNECT
  is handled after the SUBSCRIBEs it followed, as on one broker).
- per worker, SHOAL_MAX_FILTERS_WAITING new filters: a SUBSCRIBE read while the
  worker is at its bound is not handled yet; its connection stops being read
  (flow.Pause.SUBSCRIBE_LIMIT) and joins a queue, and connections are read
  again, oldest first, as routes come in. A flood of SUBSCRIBEs over many
  connections therefore costs the node a bounded amount of route work at a
  time, and the lease keep-alive and the members' heartbeats go on between.
"""
from __future__ import annotations

import logging
from collections import deque

from common.logs import kv

from .flow import Pause

log = logging.getLogger("shoal.broker")


class SubscribeGate:
    """The worker's count of new filters waiting for routes, and the connections
    that wait for room."""

    __slots__ = ("broker", "filters", "parked", "limit", "per_conn")

    def __init__(self, broker) -> None:
        self.broker = broker
        self.filters = 0  # new filters of SUBSCRIBEs whose routes are not in yet
        self.parked: deque = deque()  # connections holding a SUBSCRIBE until there is room
        st = broker.settings
        self.limit = st.max_filters_waiting
        self.per_conn = st.max_subscribes_waiting

    def full(self) -> bool:
        return self.filters >= self.limit

    def park(self, conn, frame: tuple) -> None:
        """conn read a SUBSCRIBE (frame) while the worker is at its bound: it waits."""
        conn.suspend(Pause.SUBSCRIBE_LIMIT)
        conn.backlog.insert(0, frame)
        self.parked.append(conn)
        m = self.broker.metrics
        m.subscribe_limit_pauses += 1
        if m.subscribe_limit_pauses == 1 or m.subscribe_limit_pauses % 1000 == 0:
            log.info("SUBSCRIBEs waiting for routes at SHOAL_MAX_FILTERS_WAITING: connection not read until routes are in",
                     extra=kv(client=conn.client_id, waiting=self.filters, limit=self.limit,
                              pauses=m.subscribe_limit_pauses))

    def wait(self, conn, new_filters: int, answer) -> None:
        """A SUBSCRIBE of conn handled: answer() (its SUBACK) once its routes are in,
        after the SUBACKs of conn's earlier SUBSCRIBEs."""
        answers = conn.sub_answers
        if answers is None:
            answers = conn.sub_answers = deque()
            conn.hold()  # deliveries wait behind the retained messages of the SUBACKs
        entry = [False, answer]
        answers.append(entry)
        if len(answers) >= self.per_conn:
            conn.suspend(Pause.SUBSCRIBING)
        if not new_filters:
            entry[0] = True  # (nothing to route: it answers right after the ones before it)
            return
        self.filters += new_filters

        def routed() -> None:
            self.filters -= new_filters
            entry[0] = True
            if not conn.closed:
                self._answer(conn)
            self.room()

        self.broker.bridge.sync(routed)

    def _answer(self, conn) -> None:
        answers = conn.sub_answers
        if answers is None:
            return
        while answers and answers[0][0]:
            # the SUBACK and its retained messages go out now, before the live deliveries
            # held meanwhile (which stay held until the last SUBACK)
            held, conn.held = conn.held, None
            answers.popleft()[1]()
            conn.held = held
            if conn.closed:
                return
        if answers:
            if len(answers) < self.per_conn:
                conn.resume(Pause.SUBSCRIBING)
            return
        conn.sub_answers = None
        for d in conn.release():
            conn.deliver(d)
        conn.resume(Pause.SUBSCRIBING)

    def room(self) -> None:
        """Read the parked connections again, oldest first, while there is room."""
        parked = self.parked
        while parked and self.filters < self.limit:
            conn = parked.popleft()
            if not conn.closed:
                conn.resume(Pause.SUBSCRIBE_LIMIT)  # (may park it again, at the end)
