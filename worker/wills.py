"""Wills and will delay (MQTT 5.0 3.1.3.2.2): a will is published when its
connection ends without DISCONNECT, at once or after its delay; a client back
within the delay cancels it. In a cluster the will is published once
cluster-wide, by the agent (`bridge.will_fire`)."""
from __future__ import annotations

from core.message import Message
from core.session import Session, Will
from mqtt import Prop


def will_from_connect(connect, now: float) -> Will | None:
    w = connect.will
    if w is None:
        return None
    props = w.properties or {}
    msg = Message.build(w.topic, w.payload, w.qos, w.retain, props, 0.0, connect.client_id)
    # expires_at holds the interval until the will is published (see publish_will)
    msg.expires_at = props.get(Prop.MESSAGE_EXPIRY_INTERVAL)
    return Will(msg, props.get(Prop.WILL_DELAY_INTERVAL, 0))


class Wills:
    def __init__(self, broker):
        self.b = broker

    def publish_will(self, will: Will, client_id: str | None = None) -> None:
        b = self.b
        m = will.message
        msg = Message(m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at, m.origin)
        if msg.expires_at is not None:  # the expiry interval counts from publication
            msg.expires_at = b.now + msg.expires_at
        if client_id is not None and b.bridge.cluster_wills:
            # cluster: published once cluster-wide, by whoever deletes wills/<client id> first
            # (this node, or the leader when this node was taken for dead)
            b.bridge.will_fire(client_id, msg)
            return
        b.publish(msg)

    def will_cleared(self, session: Session) -> None:
        """A normal DISCONNECT discarded the will."""
        self.b.bridge.will_set(session.client_id, None)

    def schedule(self, session: Session) -> None:
        """Publish session's will at session.will_at unless its client is back."""
        self.b.timers.schedule(("will", session.client_id), session.will_at, lambda s=session: self.due(s))

    def pending(self, client_id: str) -> bool:
        return ("will", client_id) in self.b.timers

    def cancel(self, client_id: str) -> None:
        self.b.timers.cancel(("will", client_id))

    def due(self, session: Session) -> None:
        will, session.will, session.will_at = session.will, None, None
        if will is not None and session.conn is None:
            self.publish_will(will, session.client_id)
