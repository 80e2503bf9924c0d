"""Sessions, subscriptions, retained messages and routing inside one worker.

No I/O here: connections (protocol.py) call in, and the broker calls back
into connections only through `conn.deliver`, `conn.takeover` and
`conn.complete_connect`.
"""
from __future__ import annotations

import logging
import uuid

from common.logs import kv
from common.settings import Settings
from mqtt import Prop, RetainedTrie, SubscriptionTrie

from .acl import Acl
from .bridge import LocalBridge
from .message import Message
from .metrics import Histogram, Metrics
from .session import NEVER, Delivery, Session, SubOptions, Will
from .timers import Clock, KeepaliveWheel, TimerHeap

log = logging.getLogger("shoal.broker")

MOVED_GRACE = 5.0  # seconds a handed-over session's filters still catch messages in transit


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
        self.bridge = bridge or LocalBridge()
        self.bridge.start(self)
        self._filter_refs: dict[str, int] = {}
        self.store = None  # worker.store.Store when persistence is on
        self.owns_retained = not getattr(self.bridge, "remote", False)
        self._sys_retained = 0  # $SYS topics in self.retained (outside the retained limit)
        self.route_version = 0
        self.moved = SubscriptionTrie()
        self.auth = None  # worker.auth.Authenticator (set by the server; None: no checks but allow_anonymous)
        self.admitted = 0  # connections past CONNECT's connection-limit check (SHOAL_MAX_CONNECTIONS)
        self.writer = None  # protocol.Writer once an event loop runs  # subscriptions of sessions just handed to another worker

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

    # -- connect ----------------------------------------------------------
    def assign_client_id(self) -> str:
        return f"auto-{uuid.uuid4().hex}"

    def connect(self, conn, connect) -> None:
        """Start the claim of connect.client_id; ends in `claimed` (maybe later)."""
        conn.claim_at = self.clock()
        if self.bridge.refuses_connect():
            self.claim_refused(conn, connect)
            return
        self.bridge.claim(conn, connect)

    def claimed(self, conn, connect, remote_state) -> None:
        """The node has granted this worker the client id (remote_state: a session
        handed over by another worker, or None)."""
        if conn.closed:
            self.bridge.session_released(connect.client_id)
            return
        cid = conn.client_id
        old = self.sessions.get(cid)
        present = False
        if old is not None and old.conn is not None:
            old_conn = old.conn
            # a session with expiry 0 ends with its connection, also on takeover
            ending = connect.clean_start or old.expiry_interval == 0
            self.detach(old, old_conn, takeover=True, ending=ending)
            old_conn.takeover()
            self.metrics.takeovers_local += 1
            self.takeover_seconds.observe(self.clock() - conn.claim_at)
            if ending:
                old = None
        adopted = False
        if remote_state is not None and old is None:
            old = remote_state
            adopted = True
            self.metrics.sessions_moved_in += 1
            self.takeover_seconds.observe(self.clock() - conn.claim_at)
            self.sessions[cid] = old
            self._restore_subscriptions(old)
        if old is not None and connect.clean_start:
            self.end_session(old)
            old = None
        if old is not None:
            session = old
            present = True
            self.load_queue(session)
            self.timers.cancel(("expire", cid))
            if self.timers.__contains__(("will", cid)):
                self.timers.cancel(("will", cid))  # reconnected within the will delay
                session.will = None
            session.will_at = None
        else:
            session = Session(cid)
            self.sessions[cid] = session
        self.bridge.session_registered(cid)
        session.conn = conn
        session.expires_at = None
        session.username = conn.username
        was_stored = present and not adopted and session.expiry_interval > 0
        session.expiry_interval = conn.expiry_interval
        session.will = conn.will
        self.bridge.will_set(cid, session.will)
        if self.store is not None:
            if adopted and session.expiry_interval:
                self._store_state(session)  # handed over: its queue and windows were only in the old worker's store
            elif was_stored and not session.expiry_interval:
                self.store.delete_session(cid, session)  # no longer outlives its connection
        self.save(session)
        conn.complete_connect(session, present)

    def drop_stale(self, client_id: str) -> None:
        """Cluster: another node owned client_id since this copy of its session was made
        (this node lost its lease meanwhile): the copy goes, its will is not published."""
        s = self.sessions.get(client_id)
        if s is None:
            return
        log.info("stale session dropped", extra=kv(client=client_id))
        s.will = None
        conn = s.conn
        if conn is not None:
            self.detach(s, conn, takeover=True, ending=True, send_will=False)
            conn.takeover()
        else:
            self.end_session(s)

    def adopt(self, s: Session) -> None:
        """Cluster: an offline session from a node that left (SIGTERM), now owned here."""
        cid = s.client_id
        if cid in self.sessions:
            self.drop_stale(cid)
        self.sessions[cid] = s
        self._restore_subscriptions(s)
        now = self.now
        if s.expires_at is None and s.expiry_interval != NEVER:
            s.expires_at = now + s.expiry_interval
        if s.expires_at is not None:
            self.timers.schedule(("expire", cid), s.expires_at, lambda s=s: self._expire(s))
        if s.will is not None:
            if s.will_at is None:
                s.will_at = now + s.will.delay
            self.timers.schedule(("will", cid), s.will_at, lambda s=s: self._will_due(s))
        if self.store is not None and s.expiry_interval:
            self._store_state(s)
        self.save(s)
        log.info("session adopted from a leaving node", extra=kv(client=cid))

    def gone_elsewhere(self, s: Session) -> None:
        """Cluster: this session now lives on another node (graceful leave): it goes from
        here without its will (the other node has it)."""
        cid = s.client_id
        self.timers.cancel(("expire", cid))
        self.timers.cancel(("will", cid))
        del self.sessions[cid]
        for flt in s.subscriptions:
            self.subs.remove(flt, cid)
            self._ref_filter(flt, -1)
        if self.store is not None:
            self.store.delete_session(cid, s)

    def claim_refused(self, conn, connect) -> None:
        """Cluster: the client id could not be owned here (CONNACK 0x88 / 3)."""
        from mqtt import MQTTError, ReasonCode

        from .handlers import refuse_connect

        log.info("connect refused: client id not owned here", extra=kv(client=connect.client_id))
        if not conn.closed:
            refuse_connect(conn, MQTTError(ReasonCode.SERVER_UNAVAILABLE, "client id taken by another connection"))

    def _store_state(self, s: Session) -> None:
        store, now = self.store, self.now
        for d in s.queue:
            store.queued(s, d, now)
        for d in s.inflight.values():
            store.inflight(s, d, now)
        for pid in s.incoming_qos2:
            store.qos2_in(s, pid)

    def _restore_subscriptions(self, session: Session) -> None:
        for flt, opts in session.subscriptions.items():
            if self.subs.add(flt, session.client_id, opts):
                self._ref_filter(flt, +1)

    # -- disconnect / session end ----------------------------------------
    def detach(self, session: Session, conn, *, takeover=False, ending=False, send_will=True) -> None:
        """The connection of `session` is gone (or being replaced)."""
        if session.conn is not conn:
            return
        session.conn = None
        now = self.now = self.clock()
        for d in conn.release():  # held behind a SUBSCRIBE: they stay with the session
            if d.qos:
                self.enqueue(session, d)
        self._redistribute_shared(session)
        will = session.will if send_will else None
        if not send_will:
            session.will = None
        if takeover and not ending:
            # A new connection resumes this session: a delayed will is cancelled,
            # an undelayed one is published now.
            if will is not None and will.delay == 0:
                session.will = None
                self.publish_will(will, session.client_id)
            else:
                session.will = None
            return
        if session.expiry_interval == 0 or ending:
            self.end_session(session)
            return
        if session.expiry_interval != NEVER:
            session.expires_at = now + session.expiry_interval
            self.timers.schedule(("expire", session.client_id), session.expires_at, lambda s=session: self._expire(s))
        if will is not None:
            if will.delay == 0:
                session.will = None
                self.publish_will(will, session.client_id)
            else:
                session.will_at = now + will.delay
                self.timers.schedule(("will", session.client_id), session.will_at, lambda s=session: self._will_due(s))
        self.save(session)

    def _will_due(self, session: Session) -> None:
        will, session.will, session.will_at = session.will, None, None
        if will is not None and session.conn is None:
            self.publish_will(will, session.client_id)

    def _expire(self, session: Session) -> None:
        if session.conn is None and self.sessions.get(session.client_id) is session:
            log.info("session expired", extra=kv(client=session.client_id))
            self.end_session(session)

    def end_session(self, session: Session) -> None:
        """The session ends: its subscriptions go, a pending will is published."""
        cid = session.client_id
        self.timers.cancel(("expire", cid))
        self.timers.cancel(("will", cid))
        self.load_queue(session)  # its shared-subscription messages go to other members
        if self.sessions.get(cid) is session:
            del self.sessions[cid]
            self.bridge.session_released(cid)
            if self.store is not None:
                self.store.delete_session(cid, session)
        for flt in list(session.subscriptions):
            self.unsubscribe(session, flt)
        self._redistribute_shared(session, everything=True)
        will, session.will = session.will, None
        if will is not None and session.conn is None:
            self.publish_will(will, cid)

    def publish_will(self, will: Will, client_id: str | None = None) -> None:
        m = will.message
        msg = Message(m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at, m.origin)
        if msg.expires_at is not None:  # the expiry interval counts from publication
            msg.expires_at = self.now + msg.expires_at
        if client_id is not None and self.bridge.cluster_wills:
            # cluster: published once cluster-wide, by whoever deletes wills/<client id> first
            # (this node, or the leader when this node was taken for dead)
            self.bridge.will_fire(client_id, msg)
            return
        self.publish(msg)

    def will_cleared(self, session: Session) -> None:
        """A normal DISCONNECT discarded the will."""
        self.bridge.will_set(session.client_id, None)

    # -- subscriptions ---------------------------------------------------
    def subscribe(self, session: Session, topic_filter: str, opts: SubOptions) -> bool:
        """Returns True when the subscription is new (False: replaced)."""
        existed = topic_filter in session.subscriptions
        session.subscriptions[topic_filter] = opts
        self.subs.add(topic_filter, session.client_id, opts)
        if not existed:
            self._ref_filter(topic_filter, +1)
        self.save(session)
        return not existed

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        self.subs.remove(topic_filter, session.client_id)
        self._ref_filter(topic_filter, -1)
        if self.sessions.get(session.client_id) is session:
            self.save(session)
        return True

    def _ref_filter(self, flt: str, delta: int) -> None:
        refs = self._filter_refs
        n = refs.get(flt, 0) + delta
        if n <= 0:
            refs.pop(flt, None)
            self.bridge.filter_removed(flt)
        else:
            refs[flt] = n
            if n == 1 and delta > 0:
                self.bridge.filter_added(flt)

    def retained_for(self, topic_filter: str) -> list[Message]:
        now = self.now
        out = []
        for msg in self.retained.match(topic_filter):
            if msg.expired(now):
                self._retained_expired(msg.topic, msg)
                continue
            out.append(msg)
        return out

    # -- publish ----------------------------------------------------------
    def publish(self, msg: Message, *, local_only: bool = False, on_owned=None) -> bool:
        """Route a message; True when at least one subscriber (anywhere) wants it.

        on_owned: an AckGate held open until every other worker that
        received the message owns it (routed and stored)."""
        if msg.retain:
            if self.set_retained(msg) and not local_only:
                self.bridge.retained_changed(msg, on_owned.wait() if on_owned is not None else None)
        matched = self.route_local(msg)
        # a session handed to another worker moments ago: the router, which moved its
        # routes before it reads this, sends the message after it
        if not local_only and (self.bridge.wants(msg.topic) or (len(self.moved) and self.moved.match(msg.topic))):
            self.bridge.forward(msg, on_owned.wait() if on_owned is not None else None)
            matched = True
        elif not local_only and self.bridge.remote and not msg.retain:
            self.bridge.unrouted(msg)
        return matched

    def set_retained(self, msg: Message) -> bool:
        """Retain (or with an empty payload, clear) msg; False when the limit refuses it.
        $SYS figures are outside the limit and are not stored: they are recomputed."""
        topic = msg.topic
        sys_topic = topic.startswith("$SYS/")
        if msg.payload and self.retained.get(topic) is None:
            if sys_topic:
                self._sys_retained += 1
            elif len(self.retained) - self._sys_retained >= self.settings.max_retained_messages:
                log.warning("retained message limit reached", extra=kv(topic=topic, limit=self.settings.max_retained_messages))
                self.metrics.dropped_retained_limit += 1
                return False
        if self.store is not None and self.owns_retained and not sys_topic:
            self.store.set_retained(msg, self.now)
        if msg.payload:
            self._retain(msg)
        else:
            self.retained.delete(topic)
            self.timers.cancel(("retained", topic))
        return True

    def _retain(self, msg: Message) -> None:
        self.retained.set(msg.topic, msg)
        if msg.expires_at is not None:
            self.timers.schedule(("retained", msg.topic), msg.expires_at, lambda: self._retained_expired(msg.topic, msg))
        else:
            self.timers.cancel(("retained", msg.topic))

    def _retained_expired(self, topic: str, msg: Message) -> None:
        """A retained message's expiry passed: it leaves memory and the store."""
        if self.retained.get(topic) is not msg:
            return
        self.retained.delete(topic)
        self.timers.cancel(("retained", topic))
        if self.store is not None and self.owns_retained:
            self.store.delete_retained(topic)

    def route_local(self, msg: Message, shared: bool = True) -> bool:
        topic = msg.topic
        matches = self.subs.match(topic)
        delivered = False
        if matches:
            sessions = self.sessions
            origin = msg.origin
            if len(matches) == 1:
                cid, opts = matches[0]
                if not (opts.no_local and cid == origin):
                    s = sessions.get(cid)
                    if s is not None and (not self.acl_active or self._may_read(s, topic)):
                        qos = opts.qos if opts.qos < msg.qos else msg.qos
                        retain = msg.retain and opts.retain_as_published
                        self.deliver(s, Delivery(msg, qos, retain, (opts.sub_id,) if opts.sub_id else ()))
                        delivered = True
            else:
                agg: dict[str, list] = {}
                for cid, opts in matches:
                    if opts.no_local and cid == origin:
                        continue
                    a = agg.get(cid)
                    if a is None:
                        agg[cid] = [opts.qos, opts.retain_as_published, [opts.sub_id] if opts.sub_id else []]
                    else:
                        if opts.qos > a[0]:
                            a[0] = opts.qos
                        a[1] = a[1] or opts.retain_as_published
                        if opts.sub_id:
                            a[2].append(opts.sub_id)
                for cid, (sqos, rap, ids) in agg.items():
                    s = sessions.get(cid)
                    if s is None or not self._may_read(s, topic):
                        continue
                    qos = sqos if sqos < msg.qos else msg.qos
                    self.deliver(s, Delivery(msg, qos, msg.retain and rap, tuple(sorted(ids))))
                    delivered = True
        if not shared:
            return delivered
        bridge = self.bridge
        for group in self.subs.match_shared(topic):
            if bridge.remote_group(group.group, group.topic_filter):
                continue  # members elsewhere too: the router picks one
            if self.deliver_shared(group, msg):
                delivered = True
        return delivered

    def route_remote(self, msg: Message, normal: bool, groups: list) -> None:
        """A message from another member of the node: match our plain
        subscriptions if asked, and serve the shared groups the router chose us for."""
        if normal:
            self.route_local(msg, shared=False)
            if len(self.moved):
                self._follow_moved(msg)
        if groups:
            wanted = {(g, f) for g, f in groups}
            for group in self.subs.match_shared(msg.topic):
                key = (group.group, group.topic_filter)
                if key in wanted and not self.deliver_shared(group, msg):
                    self.bridge.forward_shared(msg, *key)

    def routes_changed(self, version: int) -> None:
        """The node's route table changed (version from the router)."""
        self.route_version = version
        self.publish(Message(f"$SYS/broker/workers/{self.worker_id}/routes/version", str(version).encode(), 0, True, {}, None, ""))

    def hand_over(self, client_id: str, clean_start: bool) -> Session | None:
        """Another worker takes this client id: give the session up (None if it ends here)."""
        s = self.sessions.get(client_id)
        if s is None:
            return None
        conn = s.conn
        if conn is not None:
            self.metrics.takeovers_remote += 1
            clean_start = clean_start or s.expiry_interval == 0  # it ends with its connection
            self.detach(s, conn, takeover=True, ending=clean_start)
            conn.takeover()
        if clean_start:
            if self.sessions.get(client_id) is s:
                self.end_session(s)
            return None
        self.timers.cancel(("expire", client_id))
        self.timers.cancel(("will", client_id))
        s.will = None  # the client is back before its will delay ran out
        s.will_at = None
        self.load_queue(s)
        del self.sessions[client_id]
        for flt, opts in s.subscriptions.items():
            self.subs.remove(flt, client_id)
            self._ref_filter(flt, -1)
            if not flt.startswith("$share/"):
                self.moved.add(flt, client_id, opts)
        self.timers.schedule(("moved", client_id, id(s)), self.now + MOVED_GRACE, lambda: self._forget_moved(client_id, s))
        if self.store is not None:
            self.store.delete_session(client_id, s)
        return s

    def _forget_moved(self, client_id: str, s: Session) -> None:
        for flt in s.subscriptions:
            self.moved.remove(flt, client_id)

    def forget_moved(self, client_id: str, filters: list) -> None:
        """The router moved the routes of a session handed over from here: what it
        sends after that mark went to the new holder already."""
        for flt in filters:
            self.moved.remove(flt, client_id)

    def _follow_moved(self, msg: Message) -> None:
        """A message the router sent here before it moved a handed-over session's
        routes follows that session to its new worker (once per session)."""
        agg: dict[str, list] = {}
        for cid, opts in self.moved.match(msg.topic):
            if opts.no_local and cid == msg.origin:
                continue
            a = agg.get(cid)
            if a is None:
                agg[cid] = [opts.qos, opts.retain_as_published, [opts.sub_id] if opts.sub_id else []]
            else:
                a[0] = max(a[0], opts.qos)
                a[1] = a[1] or opts.retain_as_published
                if opts.sub_id:
                    a[2].append(opts.sub_id)
        for cid, (qos, rap, ids) in agg.items():
            self.bridge.direct(msg, cid, min(qos, msg.qos), msg.retain and rap, tuple(sorted(ids)))

    def deliver_direct(self, msg: Message, client_id: str, qos: int, retain: bool, sub_ids) -> None:
        s = self.sessions.get(client_id)
        if s is not None:
            self.deliver(s, Delivery(msg, qos, retain, tuple(sub_ids)))

    def restore(self, sessions: list[Session], retained: list[Message]) -> None:
        """Sessions and retained messages loaded from the store at start.

        Every session is offline now: one that was online when the process
        stopped starts its expiry and will delay from now; one whose expiry
        passed while the node was down ends (and its will is published)."""
        now = self.now = self.clock()
        for m in retained:
            self._retain(m)
        by_id, add, ref = self.sessions, self.subs.add, self._ref_filter
        for s in sessions:  # every session first: a will published below reaches them all
            cid = s.client_id
            by_id[cid] = s
            for flt, opts in s.subscriptions.items():
                if add(flt, cid, opts):
                    ref(flt, +1)
        ended = 0
        schedule = self.timers.schedule
        for s in sessions:
            changed = False
            if s.expires_at is None and s.expiry_interval != NEVER:
                s.expires_at = now + s.expiry_interval  # it was online when the process stopped
                changed = True
            if s.will is not None and s.will_at is None:
                s.will_at = now + s.will.delay
                changed = True
            if s.expires_at is not None and s.expires_at <= now:
                ended += 1
                self.end_session(s)  # publishes a pending will
                continue
            if s.expires_at is not None:
                schedule(("expire", s.client_id), s.expires_at, lambda s=s: self._expire(s))
            if s.will is not None:
                schedule(("will", s.client_id), s.will_at, lambda s=s: self._will_due(s))
            if changed:
                self.save(s)  # the deadlines count from now, also after another crash
        if sessions or retained:
            log.info("restored from store", extra=kv(sessions=len(sessions) - ended, expired=ended, retained=len(retained)))

    def _may_read(self, s: Session, topic: str) -> bool:
        return not self.acl_active or self.acl.can_read(s.client_id, s.username, topic)

    def deliver_shared(self, group, msg: Message, exclude: str | None = None) -> bool:
        """Give `msg` to one member of a shared group, online members first, round robin."""
        members = list(group.members.items())
        n = len(members)
        if not n:
            return False
        start = group.cursor % n
        chosen = None
        fallback = None
        for i in range(n):
            cid, opts = members[(start + i) % n]
            if cid == exclude:
                continue
            s = self.sessions.get(cid)
            if s is None or not self._may_read(s, msg.topic):
                continue
            if s.conn is not None:
                chosen = (s, opts, (start + i) % n)
                break
            if fallback is None and msg.qos > 0:
                fallback = (s, opts, (start + i) % n)
        chosen = chosen or fallback
        if chosen is None:
            return False
        s, opts, idx = chosen
        group.cursor = idx + 1
        qos = opts.qos if opts.qos < msg.qos else msg.qos
        self.deliver(s, Delivery(msg, qos, False, (opts.sub_id,) if opts.sub_id else (), (group.group, group.topic_filter)))
        return True

    def _redistribute_shared(self, session: Session, everything: bool = False) -> None:
        """A shared-subscription member left: its pending QoS 1/2 messages go to another member."""
        moved = [d for d in session.queue if d.group is not None]
        moved_inflight = [d for d in session.inflight.values() if d.group is not None and d.state == 0]
        if not moved and not moved_inflight:
            return
        store = self.store_for(session)
        for d in moved_inflight:
            del session.inflight[d.packet_id]
            if store is not None:
                store.acked(session, d.packet_id)
        if moved:
            session.queue = type(session.queue)(d for d in session.queue if d.group is None)
            if store is not None:
                for d in moved:
                    store.unqueued(session, d)
        for d in moved_inflight + moved:
            group_name, flt = d.group
            for group in self.subs.match_shared(d.msg.topic):
                if group.group == group_name and group.topic_filter == flt:
                    if self.deliver_shared(group, d.msg, exclude=session.client_id):
                        break
            else:
                if self.bridge.remote_group(group_name, flt):
                    self.bridge.forward_shared(d.msg, group_name, flt)
                elif not everything:  # nobody else: keep it for this member
                    self.enqueue(session, d)

    def deliver(self, s: Session, d: Delivery) -> None:
        conn = s.conn
        if conn is not None:
            conn.deliver(d)
        elif d.qos > 0:
            self.enqueue(s, d)

    def load_queue(self, s: Session) -> None:
        """A session restored from the store reads its queue on first use."""
        if s.queue_stored:
            if self.store is None:
                s.queue_stored = False
            else:
                self.store.load_queue(s, self.now, self.settings.max_queued_messages)

    def enqueue(self, s: Session, d: Delivery) -> None:
        if s.queue_stored:
            self.load_queue(s)
        if len(s.queue) >= self.settings.max_queued_messages:
            self.drop_queue_full(s, d)
            return
        s.queue.append(d)
        store = self.store_for(s)
        if store is not None:
            store.queued(s, d, self.now)

    def drop_queue_full(self, s: Session, d: Delivery) -> None:
        s.dropped += 1
        self.metrics.dropped_queue_full += 1
        if s.dropped == 1 or s.dropped % 1000 == 0:
            log.warning("session queue full, message dropped",
                        extra=kv(client=s.client_id, topic=d.msg.topic, limit=self.settings.max_queued_messages, dropped=s.dropped))

    def store_for(self, s: Session):
        """The store when this session's changes must be written (it outlives its
        connection and persistence is on), else None."""
        return self.store if s.expiry_interval else None

    def save(self, s: Session) -> None:
        """Write the session record (not its queue) when the session outlives its connection."""
        store = self.store_for(s)
        if store is not None and self.sessions.get(s.client_id) is s:
            store.save_session(s, self.now)

    def resync_store(self) -> None:
        """The store writes again after a failure: the changes dropped meanwhile are
        made good by writing every persistent session (and the retained messages) anew."""
        store = self.store
        for s in list(self.sessions.values()):
            if not s.expiry_interval:
                continue
            if not s.queue_stored:  # (a queue still on disk was not touched meanwhile)
                store.delete_session(s.client_id, s)
                for d in s.queue:
                    d.seq = 0
                self._store_state(s)
            self.save(s)
        if self.owns_retained:
            store.resync_retained([m for t, m in self.retained.items() if not t.startswith("$SYS/")], self.now)
        log.warning("store rewritten after its failure", extra=kv(sessions=len(self.sessions)))

    # -- shutdown ---------------------------------------------------------
    def sys_snapshot(self) -> dict:
        m = self.metrics.as_dict()
        m["clients_connected"] = len(self.connections)
        m["sessions"] = len(self.sessions)
        m["subscriptions"] = len(self.subs)
        m["retained"] = len(self.retained)
        m["uptime"] = int(self.clock() - self.started)
        return m


def will_from_connect(connect, now: float) -> Will | None:
    w = connect.will
    if w is None:
        return None
    props = w.properties or {}
    msg = Message.build(w.topic, w.payload, w.qos, w.retain, props, 0.0, connect.client_id)
    # expires_at holds the interval until the will is published (see publish_will)
    msg.expires_at = props.get(Prop.MESSAGE_EXPIRY_INTERVAL)
    return Will(msg, props.get(Prop.WILL_DELAY_INTERVAL, 0))

