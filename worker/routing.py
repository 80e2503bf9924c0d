"""Routing inside a worker: a publish to its local subscribers (plain and shared
groups), on to the router when another member wants it; messages from the
router to the sessions it chose; delivery into a session's connection or its
queue. Shared groups with members on several workers are decided by the
router; a group all of whose members are here is served round robin here,
online members first.
"""
from __future__ import annotations

import logging

from common.logs import kv
from core.message import Message
from core.session import Delivery, Session

log = logging.getLogger("shoal.broker")


class Routing:
    def __init__(self, broker):
        self.b = broker

    def publish(self, msg: Message, *, local_only: bool = False, on_owned=None) -> bool:
        """Route a message; True when at least one subscriber (anywhere) wants it.

        on_owned: an AckGate held open until every other worker that
        received the message owns it (routed and stored)."""
        b = self.b
        if b.mids is not None and msg.mid is None and not local_only:
            # (cluster) its id, before any copy of it goes anywhere: a copy delivered here and
            # one that went round another node are then the same message (worker/moved.py)
            msg.mid = next(b.mids)
        if msg.retain:
            if b.set_retained(msg) and not local_only:
                b.bridge.retained_changed(msg, on_owned.wait() if on_owned is not None else None)
        matched = self.route_local(msg)
        # a session handed to another worker moments ago: the router, which moved its
        # routes before it reads this, sends the message after it
        if not local_only and (b.bridge.wants(msg.topic) or (len(b.moved) and b.moved.match(msg.topic))):
            b.bridge.forward(msg, on_owned.wait() if on_owned is not None else None)
            matched = True
        elif not local_only and b.bridge.remote and not msg.retain:
            b.bridge.unrouted(msg)
        return matched

    def route_local(self, msg: Message, shared: bool = True) -> bool:
        b = self.b
        topic = msg.topic
        matches = b.subs.match(topic)
        delivered = False
        if matches:
            sessions = b.sessions
            origin = msg.origin
            if len(matches) == 1:
                cid, opts = matches[0]
                if not (opts.no_local and cid == origin):
                    s = sessions.get(cid)
                    if s is not None and (not b.acl_active or self.may_read(s, topic)):
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
                    if s is None or not self.may_read(s, topic):
                        continue
                    qos = sqos if sqos < msg.qos else msg.qos
                    self.deliver(s, Delivery(msg, qos, msg.retain and rap, tuple(sorted(ids))))
                    delivered = True
        if not shared:
            return delivered
        bridge = b.bridge
        for group in b.subs.match_shared(topic):
            if bridge.remote_group(group.group, group.topic_filter):
                continue  # members elsewhere too: the router picks one
            if self.deliver_shared(group, msg):
                delivered = True
        return delivered

    def route_remote(self, msg: Message, normal: bool, groups: list, ref: list | None = None) -> None:
        """A message from another member of the node: match our plain
        subscriptions if asked, and serve the shared groups the router chose us for.
        ref: the DELIVER's, when its publisher waits for our confirmation (a copy that
        follows a moved session carries it: worker/moved.py)."""
        b = self.b
        if normal:
            self.route_local(msg, shared=False)
            if len(b.moved):
                b.moves.follow(msg, ref)
        if groups:
            wanted = {(g, f) for g, f in groups}
            for group in b.subs.match_shared(msg.topic):
                key = (group.group, group.topic_filter)
                if key in wanted and not self.deliver_shared(group, msg):
                    b.bridge.forward_shared(msg, *key)

    def may_read(self, s: Session, topic: str) -> bool:
        b = self.b
        return not b.acl_active or b.acl.can_read(s.client_id, s.username, topic)

    def deliver_shared(self, group, msg: Message, exclude: str | None = None) -> bool:
        """Give `msg` to one member of a shared group, online members first, round robin."""
        b = self.b
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
            s = b.sessions.get(cid)
            if s is None or not self.may_read(s, msg.topic):
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

    def redistribute_shared(self, session: Session, everything: bool = False) -> None:
        """A shared-subscription member left: its pending QoS 1/2 messages go to another member."""
        b = self.b
        moved = [d for d in session.queue if d.group is not None]
        moved_inflight = [d for d in session.inflight.values() if d.group is not None and d.state == 0]
        if not moved and not moved_inflight:
            return
        store = b.store_for(session)
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
            for group in b.subs.match_shared(d.msg.topic):
                if group.group == group_name and group.topic_filter == flt:
                    if self.deliver_shared(group, d.msg, exclude=session.client_id):
                        break
            else:
                if b.bridge.remote_group(group_name, flt):
                    b.bridge.forward_shared(d.msg, group_name, flt)
                elif not everything:  # nobody else: keep it for this member
                    self.enqueue(session, d)

    def deliver(self, s: Session, d: Delivery) -> None:
        if self.b.arrivals and d.msg.mid is not None and self.b.moves.doubled(s, d.msg.mid):
            return  # it came both ways to a session that moved here (worker/moved.py)
        conn = s.conn
        if conn is not None:
            conn.deliver(d)
        elif d.qos > 0:
            self.enqueue(s, d)

    def enqueue(self, s: Session, d: Delivery) -> None:
        b = self.b
        if s.queue_stored:
            b.load_queue(s)
        if len(s.queue) >= b.settings.max_queued_messages:
            self.drop_queue_full(s, d)
            return
        s.queue.append(d)
        store = b.store_for(s)
        if store is not None:
            store.queued(s, d, b.now)

    def drop_queue_full(self, s: Session, d: Delivery) -> None:
        b = self.b
        s.dropped += 1
        b.metrics.dropped_queue_full += 1
        if s.dropped == 1 or s.dropped % 1000 == 0:
            log.warning("session queue full, message dropped",
                        extra=kv(client=s.client_id, topic=d.msg.topic, limit=b.settings.max_queued_messages, dropped=s.dropped))
