"""Sessions moved to another worker (hand-over through the router). The router
moves a session's routes when it grants the client id elsewhere; messages it
sent here before that mark still arrive here and follow the session to its new
worker (`bridge.direct`) while the old filters are kept for MOVED_GRACE. (A session
that went to another node: the router sends them on to that node, router/away.py.)

A session that arrived from another node (``arrived``) may get a message both ways
for a while: routed here by its publisher's node, and forwarded by the node it left.
For SHOAL_CLUSTER_MOVE_WINDOW seconds (twice, for what is still on its way) the
worker remembers the ids (``Message.mid``) of what it gave that session, at most
SHOAL_CLUSTER_MOVE_MAX_MESSAGES, and drops a second one (a QoS 2 message is never
delivered twice)."""
from __future__ import annotations

import logging
from collections import OrderedDict

from common.logs import kv
from core.message import Message
from core.session import Delivery, Session

log = logging.getLogger("shoal.broker")

MOVED_GRACE = 5.0  # seconds a handed-over session's filters still catch messages in transit


class Moved:
    def __init__(self, broker):
        self.b = broker

    def hand_over(self, client_id: str, clean_start: bool) -> Session | None:
        """Another worker takes this client id: give the session up (None if it ends here)."""
        b = self.b
        s = b.sessions.get(client_id)
        if s is None:
            return None
        conn = s.conn
        if conn is not None:
            b.metrics.takeovers_remote += 1
            clean_start = clean_start or s.expiry_interval == 0  # it ends with its connection
            b.detach(s, conn, takeover=True, ending=clean_start)
            conn.takeover()
        if clean_start:
            if b.sessions.get(client_id) is s:
                b.end_session(s)
            return None
        b.expiry.cancel(client_id)
        b.wills.cancel(client_id)
        b.arrivals.pop(client_id, None)
        s.will = None  # the client is back before its will delay ran out
        s.will_at = None
        b.load_queue(s)
        del b.sessions[client_id]
        b.subscriptions.withdraw(s)
        for flt, opts in s.subscriptions.items():
            if not flt.startswith("$share/"):
                b.moved.add(flt, client_id, opts)
        b.timers.schedule(("moved", client_id, id(s)), b.now + MOVED_GRACE, lambda: self.forget(client_id, s))
        if b.store is not None:
            b.store.delete_session(client_id, s)
        return s

    def forget(self, client_id: str, s: Session) -> None:
        for flt in s.subscriptions:
            self.b.moved.remove(flt, client_id)

    def forget_moved(self, client_id: str, filters: list) -> None:
        """The router moved the routes of a session handed over from here: what it
        sends after that mark went to the new holder already."""
        for flt in filters:
            self.b.moved.remove(flt, client_id)

    def follow(self, msg: Message, ref: list | None = None) -> None:
        """A message the router sent here before it moved a handed-over session's
        routes follows that session to its new worker (once per session). With ref (the
        DELIVER's), a QoS 1/2 copy is part of its publisher's confirmation when the session
        went to another node (router/forward.py direct)."""
        agg: dict[str, list] = {}
        for cid, opts in self.b.moved.match(msg.topic):
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
            qos = min(qos, msg.qos)
            self.b.bridge.direct(msg, cid, qos, msg.retain and rap, tuple(sorted(ids)), ref if qos else None)

    def deliver_direct(self, msg: Message, client_id: str, qos: int, retain: bool, sub_ids) -> None:
        """A message that followed a session moved here from another worker."""
        s = self.b.sessions.get(client_id)
        if s is not None:
            self.b.deliver(s, Delivery(msg, qos, retain, tuple(sub_ids)))

    # -- a session that arrived from another node (cluster) -----------------------------
    def arrived(self, s: Session) -> None:
        """s came from another node: remember what it holds and what it gets for a while."""
        b = self.b
        cid = s.client_id
        for flt in s.subscriptions:  # (it left this worker for another node moments ago)
            b.moved.remove(flt, cid)
        seen: OrderedDict = OrderedDict()
        for d in (*s.inflight.values(), *s.queue):
            if d.msg.mid is not None:
                seen[d.msg.mid] = True
        window = 2 * b.settings.cluster_move_window
        b.arrivals[cid] = seen
        b.timers.schedule(("arrived", cid, id(seen)), b.now + window, lambda: self._arrival_over(cid, seen))

    def _arrival_over(self, cid: str, seen) -> None:
        if self.b.arrivals.get(cid) is seen:
            del self.b.arrivals[cid]

    def doubled(self, s: Session, mid: int) -> bool:
        """True: s got the message with this id already (it came both ways)."""
        seen = self.b.arrivals.get(s.client_id)
        if seen is None:
            return False
        if mid in seen:
            self.b.metrics.moved_doubles_dropped += 1
            log.debug("message that reached a moved session twice dropped", extra=kv(client=s.client_id, mid=mid))
            return True
        seen[mid] = True
        if len(seen) > self.b.settings.cluster_move_max_messages:
            seen.popitem(last=False)
        return False
