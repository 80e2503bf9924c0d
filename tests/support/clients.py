"""The integration tests' one set of client steps over a RawClient (tests/support/raw.py):
CONNECT arguments of a persistent session, SUBSCRIBE, PUBLISH with its whole
handshake, and receiving as a client does.
"""
from __future__ import annotations

from mqtt import Prop
from mqtt.packets import PubAck, PubComp, Publish, PubRec, PubRel, SubAck, Subscribe, Subscription


def persistent(version: int, expiry: int = 300) -> dict:
    """CONNECT arguments for a session that outlives its connection (5.0: `expiry` seconds)."""
    if version == 5:
        return {"clean_start": False, "properties": {Prop.SESSION_EXPIRY_INTERVAL: expiry}}
    return {"clean_start": False}


def subscriptions(args, qos: int | None, opts: dict) -> list[Subscription]:
    """Subscription objects from `Subscription`s, `(filter, qos)` pairs, or filters
    each followed by its QoS (`"a/#", 1`) or taking `qos`."""
    subs: list[Subscription] = []
    args = list(args)
    i = 0
    while i < len(args):
        a = args[i]
        if isinstance(a, Subscription):
            subs.append(a)
        elif isinstance(a, tuple):
            subs.append(Subscription(*a, **opts))
        elif i + 1 < len(args) and isinstance(args[i + 1], int) and not isinstance(args[i + 1], bool):
            subs.append(Subscription(a, args[i + 1], **opts))
            i += 1
        else:
            subs.append(Subscription(a, 0 if qos is None else qos, **opts))
        i += 1
    return subs


def subscribe(c, *subs, qos: int | None = None, pid: int = 1, properties: dict | None = None,
              sub_id: int | None = None, check: bool = True, timeout: float | None = None, **opts) -> list[int]:
    """SUBSCRIBE and return the SUBACK's reason codes.

    `subscribe(c, "a/#", 1)`, `subscribe(c, ("a", 0), ("b", 2))`, `subscribe(c, "a", "b", qos=1)`
    or Subscription objects; `opts` (no_local, retain_handling...) apply to the
    ones given by filter. With `check` (the default) every filter must be granted
    the QoS it asked; `check=False` to look at refusals."""
    wanted = subscriptions(subs, qos, opts)
    props = dict(properties or {})
    if sub_id is not None:
        props[Prop.SUBSCRIPTION_IDENTIFIER] = [sub_id]
    c.send(Subscribe(pid, wanted, props))
    ack = c.expect(SubAck, timeout)
    assert ack.packet_id == pid, ack
    if check:
        assert ack.reason_codes == [min(s.qos, 2) for s in wanted], ack
    return ack.reason_codes


def publish(c, topic: str, payload: bytes, qos: int = 0, pid: int | None = None, retain: bool = False,
            properties: dict | None = None, timeout: float | None = None):
    """PUBLISH and finish the publisher's handshake (the broker then owns the message);
    returns the PUBACK / PUBREC (None for QoS 0). A refused QoS 2 gets no PUBREL."""
    if qos and pid is None:
        pid = 1
    c.send(Publish(topic, payload, qos, retain, packet_id=pid if qos else None, properties=properties or {}))
    if qos == 0:
        return None
    ack = c.expect(PubAck if qos == 1 else PubRec, timeout)
    assert ack.packet_id == pid, ack
    if qos == 2 and ack.reason_code < 0x80:
        c.send(PubRel(pid))
        assert c.expect(PubComp, timeout).packet_id == pid
    return ack


def publish_all(c, topic: str, payloads, qos: int, first_pid: int = 1, **kw) -> list[int]:
    """Send every payload (pipelined), then finish each handshake; returns the
    reason codes of the PUBACKs / PUBRECs in packet id order."""
    pids = list(range(first_pid, first_pid + len(payloads)))
    for pid, payload in zip(pids, payloads):
        c.send(Publish(topic, payload, qos, packet_id=pid if qos else None, **kw))
    if qos == 0:
        c.barrier()
        return []
    codes, done = {}, set()
    while len(done) < len(pids):
        p = c.recv()
        if isinstance(p, PubAck) and qos == 1:
            codes[p.packet_id] = p.reason_code
            done.add(p.packet_id)
        elif isinstance(p, PubRec) and qos == 2:
            codes[p.packet_id] = p.reason_code
            c.send(PubRel(p.packet_id))
        elif isinstance(p, PubComp) and qos == 2:
            done.add(p.packet_id)
        else:
            raise AssertionError(f"unexpected {p!r}")
    assert done == set(pids)
    return [codes[pid] for pid in pids]


def receive(c, count: int, timeout: float = 5.0, exact: bool = True) -> list[Publish]:
    """`count` PUBLISHes, acknowledged as a client does (QoS 2 through PUBCOMP).
    With `exact`, nothing else may have arrived by a PINGREQ round trip after them."""
    got, open_rel = [], set()
    while len(got) < count or open_rel:
        p = c.recv(timeout)
        if isinstance(p, Publish):
            got.append(p)
            if p.qos == 1:
                c.send(PubAck(p.packet_id))
            elif p.qos == 2:
                c.send(PubRec(p.packet_id))
                open_rel.add(p.packet_id)
        elif isinstance(p, PubRel) and p.packet_id in open_rel:
            open_rel.discard(p.packet_id)
            c.send(PubComp(p.packet_id))
        else:
            raise AssertionError(f"unexpected {p!r}")
    if exact:
        assert c.barrier() == []
    return got
