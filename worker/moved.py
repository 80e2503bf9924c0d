"""Sessions moved to another worker (hand-over through the router). The router
moves a session's routes when it grants the client id elsewhere; messages it
sent here before that mark still arrive here and follow the session to its new
worker (`bridge.direct`) while the old filters are kept for MOVED_GRACE."""
from __future__ import annotations

from core.message import Message
from core.session import Delivery, Session

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

    def follow(self, msg: Message) -> None:
        """A message the router sent here before it moved a handed-over session's
        routes follows that session to its new worker (once per session)."""
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
            self.b.bridge.direct(msg, cid, min(qos, msg.qos), msg.retain and rap, tuple(sorted(ids)))

    def deliver_direct(self, msg: Message, client_id: str, qos: int, retain: bool, sub_ids) -> None:
        """A message that followed a session moved here from another worker."""
        s = self.b.sessions.get(client_id)
        if s is not None:
            self.b.deliver(s, Delivery(msg, qos, retain, tuple(sub_ids)))
