"""The records of a node: messages, subscriptions, wills, deliveries and sessions
as msgpack arrays. ONE field order for every use: the stores (worker and router),
the hand-over of a session between workers (through the router), the node ops,
and later gRPC and etcd.

    message       [topic, payload, qos, retain, props, expiry, origin(, mid)]
                  (mid, in a cluster: the message's id, given where it was published,
                  see router/away.py; absent on a single node)
    subscription  [filter, qos, no_local, retain_as_published, retain_handling, sub_id]
    will          [message, delay]          (the message's expiry is its *interval*, not a deadline)
    delivery      [DELIVERY, message, qos, retain, sub_ids, group, state, packet_id]
    retained      [RETAINED, message]
    session       [SESSION, client_id, expiry_interval, username, [subscription], will, next_pid,
                   expires, will_at]
                  [SESSION_WITH_WINDOWS, ...the same nine..., [inflight delivery], [queued delivery],
                   [incoming QoS 2 packet id]]

A session alone (SESSION) is what a store keeps: its windows have keys of their
own there. A session with its windows (SESSION_WITH_WINDOWS) is a whole session
on the move (hand-over, graceful leave). The message record is unversioned: it
travels in every publish op and its shape never changes (a new shape would be a
new op or a new record kind).

Times. A record holds deadlines of the monotonic clock as either of two time
bases, given as `base` to every codec:

- RELATIVE (None): seconds from `now` (never negative), for records between
  processes of one host and between nodes, whose monotonic clocks differ;
- a wall-clock time (`time.time()` at `now`): a wall-clock deadline, for
  records that outlive the process (the stores).

Decoding turns them back into the reader's monotonic clock (`now`). A will's
message keeps its expiry interval as is (it starts when the will is published).

History: before this module the hand-over spelled a session as
``[1, cid, expiry, username, subs, inflight, queue, qos2, will, next_pid,
expires_in]`` with the will as ``[message, delay, will_in]`` and deliveries
without their version; the stores' records were the ones above. Stores written
then read unchanged (same kinds, same order); a hand-over in the old order is
refused (UnsupportedFormat), as processes of one node always run one version.
"""
from __future__ import annotations

from collections import deque

from mqtt import Prop

from .message import Message
from .session import Delivery, OutState, Session, SubOptions, Will

RELATIVE = None  # the time base of records between processes: seconds from now

# record kinds (the first field of every versioned record)
DELIVERY = 1
RETAINED = 1
SESSION = 1
SESSION_WITH_WINDOWS = 2

_STATES = tuple(OutState)


class UnsupportedFormat(ValueError):
    """A record of a kind (or version) this code does not read."""


# -- properties ------------------------------------------------------------------
def props_to_wire(props: dict):
    return {int(k): v for k, v in props.items()} if props else None


_PROP_BY_INT = {int(p): p for p in Prop}  # (an Enum call per property cost the receiving worker 1.3%)


def props_from_wire(props: dict | None) -> dict:
    if not props:
        return {}
    by_int = _PROP_BY_INT
    out = {by_int.get(k) or Prop(k): v for k, v in props.items()}  # (Prop(k) only for an unknown k: it raises)
    up = out.get(Prop.USER_PROPERTY)
    if up is not None:
        out[Prop.USER_PROPERTY] = [(k, v) for k, v in up]
    return out


# -- times -------------------------------------------------------------------------
def time_out(t: float | None, now: float, base: float | None) -> float | None:
    """A monotonic deadline as a record spells it (see the module's Times)."""
    if t is None:
        return None
    if base is None:
        return max(0.0, t - now)
    return base + (t - now)


def time_in(v: float | None, now: float, base: float | None) -> float | None:
    """A record's time back on the reader's monotonic clock."""
    if v is None:
        return None
    if base is None:
        return now + v
    return now + (v - base)


# -- messages ----------------------------------------------------------------------
def message_record(m: Message, now: float, base: float | None = RELATIVE) -> list:
    t = m.expires_at
    if t is not None:
        t = max(0.0, t - now) if base is None else base + (t - now)
    if m.mid is not None:
        return [m.topic, m.payload, m.qos, m.retain, props_to_wire(m.properties), t, m.origin, m.mid]
    return [m.topic, m.payload, m.qos, m.retain, props_to_wire(m.properties), t, m.origin]


def message_from(w: list, now: float, base: float | None = RELATIVE) -> Message:
    n = len(w)
    if n == 8:  # (a cluster message: with its mid; no slice of the list on this hot path)
        topic, payload, qos, retain, props, t, origin, mid = w
    elif n == 7:
        topic, payload, qos, retain, props, t, origin = w
        mid = None
    else:
        topic, payload, qos, retain, props, t, origin = w[:7]
        mid = w[7] if n > 7 else None
    if t is not None:
        t = now + t if base is None else now + (t - base)
    return Message(topic, payload, qos, retain, props_from_wire(props) if props else {}, t, origin, mid)


def msg_to_wire(m: Message, now: float) -> list:
    """The message of a node op (relative times)."""
    return message_record(m, now)


def msg_from_wire(w: list, now: float) -> Message:
    return message_from(w, now)


def retained_record(m: Message, now: float, base: float | None = RELATIVE) -> list:
    return [RETAINED, message_record(m, now, base)]


def retained_from(w: list, now: float, base: float | None = RELATIVE) -> Message:
    if not w or w[0] != RETAINED:
        raise UnsupportedFormat(f"retained record version {w[0] if w else None!r} is not supported")
    return message_from(w[1], now, base)


# -- subscriptions -----------------------------------------------------------------
def subscription_record(flt: str, o: SubOptions) -> list:
    return [flt, o.qos, o.no_local, o.retain_as_published, o.retain_handling, o.sub_id]


def subscription_from(w: list) -> tuple[str, SubOptions]:
    flt, qos, nl, rap, rh, sid = w[:6]
    return flt, SubOptions(qos, nl, rap, rh, sid)


# -- wills -------------------------------------------------------------------------
def will_message_record(m: Message) -> list:
    """A will's message: its expiry field holds the interval (it runs once published)."""
    return [m.topic, m.payload, m.qos, m.retain, props_to_wire(m.properties), m.expires_at, m.origin]


def will_record(will: Will) -> list:
    return [will_message_record(will.message), will.delay]


def will_from(w: list) -> Will:
    mw, delay = w[:2]
    topic, payload, qos, retain, props, interval, origin = mw[:7]
    return Will(Message(topic, payload, qos, retain, props_from_wire(props), interval, origin), delay)


# -- deliveries --------------------------------------------------------------------
def delivery_record(d: Delivery, now: float, base: float | None = RELATIVE) -> list:
    return [DELIVERY, message_record(d.msg, now, base), d.qos, d.retain, list(d.sub_ids),
            list(d.group) if d.group else None, int(d.state), d.packet_id]


def delivery_from(w: list, msg: Message | None = None, now: float = 0.0, base: float | None = RELATIVE) -> Delivery:
    """A delivery; `msg` is its message when the caller decoded it already (a store
    shares one object between the queues a message is in)."""
    if not w or w[0] != DELIVERY:
        raise UnsupportedFormat(f"delivery record version {w[0] if w else None!r} is not supported")
    _, mw, qos, retain, sub_ids, group, state, pid = w[:8]
    if msg is None:
        msg = message_from(mw, now, base)
    return Delivery(msg, qos, retain, tuple(sub_ids), tuple(group) if group else None, _STATES[state], pid)


# -- sessions ----------------------------------------------------------------------
def session_record(s: Session, now: float, base: float | None = RELATIVE, windows: bool = False) -> list:
    """The session (SESSION); with its inflight window, queue and incoming QoS 2
    packet ids when `windows` (SESSION_WITH_WINDOWS)."""
    rec = [SESSION_WITH_WINDOWS if windows else SESSION, s.client_id, s.expiry_interval, s.username,
           [subscription_record(f, o) for f, o in s.subscriptions.items()],
           None if s.will is None else will_record(s.will), s.next_pid,
           time_out(s.expires_at, now, base), time_out(s.will_at, now, base)]
    if windows:
        rec += [[delivery_record(d, now, base) for d in s.inflight.values()],
                [delivery_record(d, now, base) for d in s.queue], sorted(s.incoming_qos2)]
    return rec


def session_from(w: list, now: float, base: float | None = RELATIVE) -> Session:
    """A session from either kind of session record."""
    kind = w[0] if w else None
    if kind != SESSION and kind != SESSION_WITH_WINDOWS:
        raise UnsupportedFormat(f"session record version {kind!r} is not supported")
    _, cid, expiry, username, subs, will, next_pid, expires, will_at = w[:9]
    s = Session(cid, expiry)
    s.username = username
    subscriptions = s.subscriptions
    for f, qos, nl, rap, rh, sid in subs:
        subscriptions[f] = SubOptions(qos, nl, rap, rh, sid)
    if will is not None:
        s.will = will_from(will)
    s.next_pid = next_pid
    if expires is not None:
        s.expires_at = now + expires if base is None else now + (expires - base)
    if will_at is not None:
        s.will_at = now + will_at if base is None else now + (will_at - base)
    if kind == SESSION_WITH_WINDOWS:
        inflight, queue, qos2 = w[9:12]
        for dw in inflight:
            d = delivery_from(dw, None, now, base)
            s.inflight[d.packet_id] = d
        s.queue = deque(delivery_from(dw, None, now, base) for dw in queue)
        s.incoming_qos2 = set(qos2)
    return s


def session_to_wire(s: Session, now: float) -> list:
    """A whole session on the move between processes (relative times)."""
    return session_record(s, now, RELATIVE, windows=True)


def session_from_wire(w: list, now: float) -> Session:
    if not w or w[0] != SESSION_WITH_WINDOWS:
        raise UnsupportedFormat(f"session hand-over record version {w[0] if w else None!r} is not "
                                f"{SESSION_WITH_WINDOWS}")
    return session_from(w, now, RELATIVE)
