"""The broker of one worker: sessions, subscriptions, retained messages and
routing, split by concern as mosquitto splits src/ (each part a file):

    sessions.py       sessions and claims: connect, grant, detach, end, restore
    wills.py          wills and will delay
    expiry.py         session expiry
    subscriptions.py  subscriptions and the worker's route counts
    retain.py         retained messages
    routing.py        local and shared routing, delivery, queues
    moved.py          sessions handed over to another worker (messages that follow them)
    persist.py        what goes to the store, and its resync after a failure
    sys_topics.py     $SYS figures

`Broker` holds the state they share (sessions, tries, timers, store, bridge,
clock) and is the one object the rest of the worker calls: each public method
is bound to the part that does it. No I/O here: connections (protocol.py) call
in, and the broker calls back into connections only through `conn.deliver`,
`conn.takeover` and `conn.complete_connect`.
"""
from __future__ import annotations

import itertools
import logging
import os

from common.logs import kv
from common.settings import Settings
from mqtt import RetainedTrie, SubscriptionTrie

from . import sys_topics
from .acl import Acl
from .bridge import LocalBridge
from .expiry import Expiry
from .message import Message
from .metrics import Histogram, Metrics
from .moved import MOVED_GRACE, Moved  # noqa: F401 (MOVED_GRACE: re-exported)
from .persist import Persist
from .retain import Retain
from .routing import Routing
from .session import Session
from .sessions import Sessions
from .subscriptions import Subscriptions
from .subwait import SubscribeGate
from .timers import Clock, KeepaliveWheel, TimerHeap
from .wills import Wills, will_from_connect  # noqa: F401 (will_from_connect: re-exported for handlers)

log = logging.getLogger("shoal.broker")


class Broker:
    def __init__(self, settings: Settings, clock, acl: Acl | None = None, bridge=None, worker_id: int = 1):
        self.settings = settings
        self.clock = clock if hasattr(clock, "call_later") else Clock(clock)  # timers.Clock: now and call_later
        self.now = clock()
        self.started = self.now
        self.acl = acl or Acl.allow_all()
        self.acl_active = acl is not None and not getattr(acl, "allows_all", False)
        self.worker_id = worker_id
        self.sessions: dict[str, Session] = {}
        self.subs = SubscriptionTrie()
        self.retained = RetainedTrie()
        self.timers = TimerHeap()
        self.keepalive = KeepaliveWheel()
        self.metrics = Metrics()
        self.takeover_seconds = Histogram()  # CONNECT to grant, when it took a session over
        self.connections: set = set()
        self._filter_refs: dict[str, int] = {}  # filter -> sessions here holding it (subscriptions.py)
        self.store = None  # worker.store.Store when persistence is on
        self.route_version = 0
        self.moved = SubscriptionTrie()  # subscriptions of sessions just handed to another worker
        self.arrivals: dict = {}  # client id -> ids of messages given to a session just arrived from another node
        # cluster: ids of the messages published here, unique cluster-wide (a random prefix per process)
        self.mids = itertools.count(int.from_bytes(os.urandom(4), "big") << 32) if settings.clustered else None
        self.auth = None  # worker.auth.Authenticator (set by the server; None: no checks but allow_anonymous)
        self.admitted = 0  # connections past CONNECT's connection-limit check (SHOAL_MAX_CONNECTIONS)
        self.writer = None  # protocol.Writer once an event loop runs

        # the parts
        self.lifecycle = Sessions(self)
        self.wills = Wills(self)
        self.expiry = Expiry(self)
        self.subscriptions = Subscriptions(self)
        self.retain = Retain(self)
        self.routing = Routing(self)
        self.moves = Moved(self)
        self.persist = Persist(self)
        self.subgate = SubscribeGate(self)  # SUBSCRIBEs waiting for routes, bounded

        # the facade: what the rest of the worker calls, bound to the part that does it
        lc, wl, sb, rt, ro, mv, ps = (self.lifecycle, self.wills, self.subscriptions, self.retain, self.routing,
                                      self.moves, self.persist)
        self.assign_client_id = lc.assign_client_id
        self.connect = lc.connect
        self.claimed = lc.claimed
        self.claim_refused = lc.claim_refused
        self.drop_stale = lc.drop_stale
        self.adopt = lc.adopt
        self.gone_elsewhere = lc.gone_elsewhere
        self.detach = lc.detach
        self.end_session = lc.end_session
        self.publish_will = wl.publish_will
        self.will_cleared = wl.will_cleared
        self.subscribe = sb.subscribe
        self.unsubscribe = sb.unsubscribe
        self.set_retained = rt.set_retained
        self.retained_for = rt.retained_for
        self.publish = ro.publish
        self.route_local = ro.route_local
        self.route_remote = ro.route_remote
        self.deliver = ro.deliver
        self.deliver_shared = ro.deliver_shared
        self.enqueue = ro.enqueue
        self.drop_queue_full = ro.drop_queue_full
        self.hand_over = mv.hand_over
        self.forget_moved = mv.forget_moved
        self.deliver_direct = mv.deliver_direct
        self.store_for = ps.store_for
        self.save = ps.save
        self.load_queue = ps.load_queue
        self.resync_store = ps.resync_store

        self.bridge = bridge or LocalBridge()
        self.bridge.start(self)
        self.owns_retained = not getattr(self.bridge, "remote", False)

    # -- time -------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Once per second (or when a test moves its clock)."""
        self.now = now = self.clock() if now is None else now
        for conn in self.keepalive.expire(now):
            conn.keepalive_expired()
        self.timers.run_due(now)
        if self.store is not None:
            if self.store.failed:
                self.store.probe()
            self.store.maybe_compact()

    # -- start ------------------------------------------------------------
    def restore(self, sessions: list[Session], retained: list[Message]) -> None:
        """Sessions and retained messages loaded from the store at start (sessions.py
        says what happens to their deadlines)."""
        self.now = self.clock()
        self.retain.restore(retained)
        ended = self.lifecycle.restore(sessions)
        if sessions or retained:
            log.info("restored from store", extra=kv(sessions=len(sessions) - ended, expired=ended, retained=len(retained)))

    # -- $SYS -------------------------------------------------------------
    def routes_changed(self, version: int) -> None:
        sys_topics.routes_changed(self, version)

    def sys_snapshot(self) -> dict:
        return sys_topics.snapshot(self)
