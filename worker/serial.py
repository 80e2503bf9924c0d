"""Messages and sessions as versioned msgpack arrays.

Used for the hand-over of a session between workers (through the router) and
by the store. Times travel as intervals relative to the sender's clock.
"""
from __future__ import annotations

from collections import deque

from mqtt import Prop

from .message import Message
from .session import Delivery, OutState, Session, SubOptions, Will

SESSION_FORMAT = 1


def props_to_wire(props: dict):
    return {int(k): v for k, v in props.items()} if props else None


def props_from_wire(props: dict | None) -> dict:
    if not props:
        return {}
    out = {Prop(k): v for k, v in props.items()}
    up = out.get(Prop.USER_PROPERTY)
    if up is not None:
        out[Prop.USER_PROPERTY] = [(k, v) for k, v in up]
    return out


def msg_to_wire(m: Message, now: float) -> list:
    expires_in = None if m.expires_at is None else max(0.0, m.expires_at - now)
    return [m.topic, m.payload, m.qos, m.retain, props_to_wire(m.properties), expires_in, m.origin]


def msg_from_wire(w: list, now: float) -> Message:
    topic, payload, qos, retain, props, expires_in, origin = w[:7]
    return Message(topic, payload, qos, retain, props_from_wire(props), None if expires_in is None else now + expires_in, origin)


def _delivery_to_wire(d: Delivery, now: float) -> list:
    return [msg_to_wire(d.msg, now), d.qos, d.retain, list(d.sub_ids), list(d.group) if d.group else None, int(d.state), d.packet_id]


def _delivery_from_wire(w: list, now: float) -> Delivery:
    msg, qos, retain, sub_ids, group, state, pid = w
    return Delivery(msg_from_wire(msg, now), qos, retain, tuple(sub_ids), tuple(group) if group else None, OutState(state), pid)


def session_to_wire(s: Session, now: float) -> list:
    will = None
    if s.will is not None:
        m = s.will.message  # expires_at of a will holds its expiry *interval*
        will = [[m.topic, m.payload, m.qos, m.retain, props_to_wire(m.properties), m.expires_at, m.origin], s.will.delay,
                None if s.will_at is None else max(0.0, s.will_at - now)]
    return [
        SESSION_FORMAT,
        s.client_id,
        s.expiry_interval,
        s.username,
        [[f, o.qos, o.no_local, o.retain_as_published, o.retain_handling, o.sub_id] for f, o in s.subscriptions.items()],
        [_delivery_to_wire(d, now) for d in s.inflight.values()],
        [_delivery_to_wire(d, now) for d in s.queue],
        sorted(s.incoming_qos2),
        will,
        s.next_pid,
        None if s.expires_at is None else max(0.0, s.expires_at - now),
    ]


class UnsupportedFormat(ValueError):
    pass


def session_from_wire(w: list, now: float) -> Session:
    if not w or w[0] != SESSION_FORMAT:
        raise UnsupportedFormat(f"session record format {w[0] if w else None!r} is not {SESSION_FORMAT}")
    _, cid, expiry, username, subs, inflight, queue, qos2, will, next_pid, expires_in = w[:11]
    s = Session(cid, expiry)
    s.username = username
    for f, qos, nl, rap, rh, sid in subs:
        s.subscriptions[f] = SubOptions(qos, nl, rap, rh, sid)
    for dw in inflight:
        d = _delivery_from_wire(dw, now)
        s.inflight[d.packet_id] = d
    s.queue = deque(_delivery_from_wire(dw, now) for dw in queue)
    s.incoming_qos2 = set(qos2)
    if will is not None:
        mw, delay, will_in = will
        topic, payload, qos, retain, props, interval, origin = mw
        s.will = Will(Message(topic, payload, qos, retain, props_from_wire(props), interval, origin), delay)
        s.will_at = None if will_in is None else now + will_in
    s.next_pid = next_pid
    s.expires_at = None if expires_in is None else now + expires_in
    return s
