"""A worker's subscriptions and its route counts: how many of its sessions hold
each filter. The node's route table learns of a filter when its first session
here subscribes to it and forgets it when its last one leaves
(`bridge.filter_added` / `filter_removed`)."""
from __future__ import annotations

from core.session import Session, SubOptions


class Subscriptions:
    def __init__(self, broker):
        self.b = broker
        self.refs = broker._filter_refs  # filter -> sessions of this worker holding it

    def subscribe(self, session: Session, topic_filter: str, opts: SubOptions) -> bool:
        """Returns True when the subscription is new (False: replaced)."""
        b = self.b
        existed = topic_filter in session.subscriptions
        session.subscriptions[topic_filter] = opts
        b.subs.add(topic_filter, session.client_id, opts)
        if not existed:
            self.ref_filter(topic_filter, +1)
        b.save(session)
        return not existed

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        b = self.b
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        b.subs.remove(topic_filter, session.client_id)
        self.ref_filter(topic_filter, -1)
        if b.sessions.get(session.client_id) is session:
            b.save(session)
        return True

    def ref_filter(self, flt: str, delta: int) -> None:
        refs = self.refs
        n = refs.get(flt, 0) + delta
        if n <= 0:
            refs.pop(flt, None)
            self.b.bridge.filter_removed(flt)
        else:
            refs[flt] = n
            if n == 1 and delta > 0:
                self.b.bridge.filter_added(flt)

    def restore(self, session: Session) -> None:
        """A session that arrived (handed over, adopted): its subscriptions match here."""
        add = self.b.subs.add
        for flt, opts in session.subscriptions.items():
            if add(flt, session.client_id, opts):
                self.ref_filter(flt, +1)

    def withdraw(self, session: Session) -> None:
        """A session that left this worker: its subscriptions no longer match here
        (the session keeps them)."""
        remove, cid = self.b.subs.remove, session.client_id
        for flt in session.subscriptions:
            remove(flt, cid)
            self.ref_filter(flt, -1)
