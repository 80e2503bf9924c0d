"""The broker of one worker without circusd: a Broker with a LocalBridge, each
client a Connection on a fake transport fed MQTT 5.0 packets written out byte by
byte here (not with the broker's codec), a clock the test moves. Covers the
parts of worker/broker.py: routing (plain, overlapping, no local, shared
groups), queues of offline sessions, retained messages, wills and their delay,
session expiry, the route counts the node's route table hears of."""
from __future__ import annotations

import asyncio
import functools

from common.settings import Settings
from worker.bridge import LocalBridge
from worker.broker import Broker
from worker.protocol import Connection
from tests.support.fakes import FakeTransport
from tests.support.wire import frames


# -- MQTT 5.0 bytes, written out -------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    return varint(len(body)) + body


def u32(ident: int, value: int) -> bytes:
    return bytes([ident]) + value.to_bytes(4, "big")


def connect(cid: str, clean: bool = True, expiry: int | None = None, will: tuple | None = None) -> bytes:
    """will: (topic, payload, qos, delay)."""
    flags = 0x02 if clean else 0
    payload = utf8(cid)
    if will is not None:
        topic, data, qos, delay = will
        flags |= 0x04 | (qos << 3)
        payload += props(u32(0x18, delay) if delay else b"") + utf8(topic) + len(data).to_bytes(2, "big") + data
    return packet(0x10, utf8("MQTT") + b"\x05" + bytes([flags]) + (60).to_bytes(2, "big")
                  + props(u32(0x11, expiry) if expiry is not None else b"") + payload)


def subscribe(pid: int, flt: str, qos: int = 0, no_local: bool = False, sub_id: int | None = None) -> bytes:
    return packet(0x82, pid.to_bytes(2, "big") + props(b"\x0b" + varint(sub_id) if sub_id else b"")
                  + utf8(flt) + bytes([qos | (0x04 if no_local else 0)]))


def publish(topic: str, payload: bytes, qos: int = 0, pid: int = 0, retain: bool = False,
            expiry: int | None = None) -> bytes:
    body = utf8(topic) + (pid.to_bytes(2, "big") if qos else b"")
    body += props(u32(0x02, expiry) if expiry is not None else b"") + payload
    return packet(0x30 | (qos << 1) | (1 if retain else 0), body)


def puback(pid: int) -> bytes:
    return packet(0x40, pid.to_bytes(2, "big"))


DISCONNECT = packet(0xE0, b"")  # normal: no will


# -- reading what the broker wrote ---------------------------------------------------------
def read_varint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return n, i


def parse_publish(first: int, body: bytes) -> dict:
    tlen = int.from_bytes(body[:2], "big")
    topic = body[2:2 + tlen].decode()
    i = 2 + tlen
    qos = (first >> 1) & 3
    pid = None
    if qos:
        pid = int.from_bytes(body[i:i + 2], "big")
        i += 2
    plen, i = read_varint(body, i)
    end = i + plen
    sub_ids = []
    while i < end:
        ident = body[i]
        i += 1
        if ident == 0x0B:
            sid, i = read_varint(body, i)
            sub_ids.append(sid)
        elif ident == 0x02:
            i += 4
        else:
            raise AssertionError(f"unexpected property {ident:#x}")
    return {"topic": topic, "payload": body[end:], "qos": qos, "retain": bool(first & 1), "pid": pid,
            "sub_ids": sub_ids}


class Client:
    def __init__(self, broker: Broker) -> None:
        self.conn, self.t = Connection(broker), FakeTransport()
        self.conn.connection_made(self.t)
        self.seen = 0

    def send(self, *packets: bytes) -> "Client":
        self.conn.data_received(b"".join(packets))
        return self

    def received(self) -> list[tuple[int, bytes]]:
        """Packets written since the last call."""
        new = frames(bytes(self.t.data[self.seen:]))
        self.seen = len(self.t.data)
        return new

    def publishes(self) -> list[dict]:
        return [parse_publish(f, b) for f, b in self.received() if f >> 4 == 3]

    def drop(self) -> None:
        """The socket is gone (no DISCONNECT)."""
        self.conn.connection_lost(None)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Bridge(LocalBridge):
    """The single-worker bridge, recording what the node's route table would hear."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, str]] = []

    def filter_added(self, topic_filter: str) -> None:
        self.routes.append(("+", topic_filter))

    def filter_removed(self, topic_filter: str) -> None:
        self.routes.append(("-", topic_filter))


def with_loop(fn):
    """Connection arms its CONNECT timer on the running loop: each test runs in one."""
    @functools.wraps(fn)
    def run():
        async def main():
            fn()
        asyncio.run(main())
    return run


def broker(**settings) -> tuple[Broker, Clock, Bridge]:
    clock, bridge = Clock(), Bridge()
    b = Broker(Settings(persistence=False, workers=1, **settings), clock, None, bridge, 1)
    b.tick()
    return b, clock, bridge


def client(b: Broker, cid: str, *subs: bytes, **connect_args) -> Client:
    c = Client(b).send(connect(cid, **connect_args), *subs)
    kinds = [f >> 4 for f, _ in c.received()]
    assert kinds == [2] + [9] * len(subs), kinds  # CONNACK, then a SUBACK per SUBSCRIBE
    return c


# -- routing ---------------------------------------------------------------------------------
@with_loop
def test_a_publish_reaches_matching_subscribers_at_the_lower_qos():
    b, _, _ = broker()
    one = client(b, "one", subscribe(1, "a/+", 1))
    zero = client(b, "zero", subscribe(1, "a/#", 0))
    other = client(b, "other", subscribe(1, "b/#", 1))
    pub = client(b, "pub")
    pub.send(publish("a/x", b"hi", 1, pid=7))
    assert [f >> 4 for f, _ in pub.received()] == [4]  # PUBACK
    (m1,) = one.publishes()
    assert (m1["topic"], m1["payload"], m1["qos"]) == ("a/x", b"hi", 1)
    (m0,) = zero.publishes()
    assert (m0["qos"], m0["pid"]) == (0, None)
    assert other.publishes() == []


@with_loop
def test_overlapping_subscriptions_give_one_copy_with_the_highest_qos_and_every_id():
    b, _, _ = broker()
    c = client(b, "c", subscribe(1, "a/+", 0, sub_id=3), subscribe(2, "a/#", 2, sub_id=5), subscribe(3, "#", 1))
    client(b, "pub").send(publish("a/b", b"x", 2, pid=1))
    (m,) = c.publishes()
    assert m["qos"] == 2 and sorted(m["sub_ids"]) == [3, 5]


@with_loop
def test_no_local_keeps_a_clients_own_publish_from_it():
    b, _, _ = broker()
    me = client(b, "me", subscribe(1, "t", 0, no_local=True))
    peer = client(b, "peer", subscribe(1, "t", 0))
    me.send(publish("t", b"mine"))
    assert me.publishes() == [] and [m["payload"] for m in peer.publishes()] == [b"mine"]


@with_loop
def test_a_shared_group_on_one_worker_is_served_round_robin():
    b, _, _ = broker()
    members = [client(b, f"m{i}", subscribe(1, "$share/g/jobs/+", 1)) for i in range(2)]
    plain = client(b, "plain", subscribe(1, "jobs/#", 0))
    pub = client(b, "pub")
    for i in range(6):
        pub.send(publish(f"jobs/{i}", str(i).encode(), 1, pid=i + 1))
    got = [[m["payload"] for m in c.publishes()] for c in members]
    assert sorted(got[0] + got[1]) == [str(i).encode() for i in range(6)]  # each once
    assert len(got[0]) == len(got[1]) == 3  # in turn
    assert len(plain.publishes()) == 6  # plain subscribers are not part of the group


@with_loop
def test_a_shared_group_prefers_online_members_and_queues_for_an_offline_one_only_when_alone():
    b, _, _ = broker()
    away = client(b, "away", subscribe(1, "$share/g/t", 1), clean=False, expiry=300)
    here = client(b, "here", subscribe(1, "$share/g/t", 1))
    away.drop()
    pub = client(b, "pub")
    for i in range(3):
        pub.send(publish("t", b"%d" % i, 1, pid=i + 1))
    got = here.publishes()
    assert len(got) == 3 and len(b.sessions["away"].queue) == 0
    here.send(*(puback(m["pid"]) for m in got))  # (unacknowledged, they would go to the other member)
    here.send(DISCONNECT)
    pub.send(publish("t", b"alone", 1, pid=9))
    assert [d.msg.payload for d in b.sessions["away"].queue] == [b"alone"]


# -- queues ------------------------------------------------------------------------------------
@with_loop
def test_an_offline_session_queues_qos_1_not_qos_0_and_gets_it_on_return():
    b, _, _ = broker()
    client(b, "s", subscribe(1, "q/#", 1), clean=False, expiry=300).drop()
    pub = client(b, "pub")
    pub.send(publish("q/0", b"zero", 0), publish("q/1", b"one", 1, pid=1))
    assert [d.msg.topic for d in b.sessions["s"].queue] == ["q/1"]
    back = Client(b).send(connect("s", clean=False, expiry=300))
    (first, body), *rest = back.received()
    assert first >> 4 == 2 and body[0] == 1  # CONNACK, session present
    assert [parse_publish(f, p)["payload"] for f, p in rest] == [b"one"]


@with_loop
def test_a_full_queue_drops_and_counts():
    b, _, _ = broker(max_queued_messages=2)
    client(b, "s", subscribe(1, "q", 1), clean=False, expiry=300).drop()
    pub = client(b, "pub")
    for i in range(4):
        pub.send(publish("q", b"%d" % i, 1, pid=i + 1))
    assert [d.msg.payload for d in b.sessions["s"].queue] == [b"0", b"1"]
    assert b.metrics.dropped_queue_full == 2 and b.sessions["s"].dropped == 2


# -- retained ----------------------------------------------------------------------------------
@with_loop
def test_retained_messages_go_to_new_subscribers_until_cleared_or_expired():
    b, clock, _ = broker()
    pub = client(b, "pub")
    pub.send(publish("r/keep", b"kept", 1, pid=1, retain=True),
             publish("r/short", b"brief", 0, retain=True, expiry=10))
    first = client(b, "first")
    first.send(subscribe(1, "r/#", 1))
    assert sorted(m["payload"] for m in first.publishes()) == [b"brief", b"kept"]
    clock.t += 11
    b.tick()
    pub.send(publish("r/keep", b"", 0, retain=True))  # an empty payload clears
    later = client(b, "later")
    later.send(subscribe(1, "r/#", 1))
    assert later.publishes() == [] and len(b.retained) == 0


@with_loop
def test_the_retained_limit_refuses_new_topics_but_not_sys_figures():
    b, _, _ = broker(max_retained_messages=1)
    pub = client(b, "pub")
    pub.send(publish("r/1", b"a", 0, retain=True), publish("r/2", b"b", 0, retain=True))
    assert [m.topic for m in b.retained_for("r/#")] == ["r/1"] and b.metrics.dropped_retained_limit == 1
    b.routes_changed(4)  # a $SYS figure, outside the limit
    assert [m.payload for m in b.retained_for("$SYS/broker/workers/1/routes/version")] == [b"4"]


# -- wills and expiry ----------------------------------------------------------------------------
@with_loop
def test_a_delayed_will_is_published_when_its_delay_ran_out():
    b, clock, _ = broker()
    watcher = client(b, "watch", subscribe(1, "wills/#", 1))
    client(b, "dev", clean=False, expiry=300, will=("wills/dev", b"gone", 1, 30)).drop()
    clock.t += 29
    b.tick()
    assert watcher.publishes() == []
    clock.t += 1
    b.tick()
    assert [(m["topic"], m["payload"]) for m in watcher.publishes()] == [("wills/dev", b"gone")]


@with_loop
def test_a_client_back_within_the_will_delay_cancels_its_will():
    b, clock, _ = broker()
    watcher = client(b, "watch", subscribe(1, "wills/#", 1))
    client(b, "dev", clean=False, expiry=300, will=("wills/dev", b"gone", 1, 30)).drop()
    clock.t += 10
    client(b, "dev", clean=False, expiry=300)
    clock.t += 60
    b.tick()
    assert watcher.publishes() == []


@with_loop
def test_a_shared_members_unacknowledged_messages_go_to_another_member_when_it_ends():
    b, _, _ = broker()
    away = client(b, "away", subscribe(1, "$share/g/t", 1), clean=False, expiry=300)
    away.drop()
    here = client(b, "here", subscribe(1, "$share/g/t", 1))
    pub = client(b, "pub")
    pub.send(publish("t", b"a", 1, pid=1), publish("t", b"b", 1, pid=2))
    assert [m["payload"] for m in here.publishes()] == [b"a", b"b"]
    here.send(DISCONNECT)  # never acknowledged: they are not lost with it
    assert [d.msg.payload for d in b.sessions["away"].queue] == [b"a", b"b"]


@with_loop
def test_a_normal_disconnect_discards_the_will_and_a_dropped_connection_sends_it():
    b, _, _ = broker()
    watcher = client(b, "watch", subscribe(1, "wills/#", 0))
    client(b, "polite", will=("wills/polite", b"x", 0, 0)).send(DISCONNECT)
    client(b, "rude", will=("wills/rude", b"y", 0, 0)).drop()
    assert [m["topic"] for m in watcher.publishes()] == ["wills/rude"]


@with_loop
def test_an_offline_session_expires_after_its_interval_with_its_routes():
    b, clock, bridge = broker()
    client(b, "s", subscribe(1, "e/#", 1), clean=False, expiry=60).drop()
    assert "s" in b.sessions and ("+", "e/#") in bridge.routes
    clock.t += 59
    b.tick()
    assert "s" in b.sessions
    clock.t += 1
    b.tick()
    assert "s" not in b.sessions and bridge.routes[-1] == ("-", "e/#") and "e/#" not in b._filter_refs


@with_loop
def test_the_route_table_hears_of_a_filter_once_per_worker():
    b, _, bridge = broker()
    a = client(b, "a", subscribe(1, "f/#", 0))
    c = client(b, "c", subscribe(1, "f/#", 0))
    assert bridge.routes == [("+", "f/#")] and b._filter_refs == {"f/#": 2}
    a.send(DISCONNECT)
    assert bridge.routes == [("+", "f/#")]
    c.send(packet(0xA2, (2).to_bytes(2, "big") + props() + utf8("f/#")))  # UNSUBSCRIBE
    assert bridge.routes == [("+", "f/#"), ("-", "f/#")] and b._filter_refs == {}
