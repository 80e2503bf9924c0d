"""core/records.py: one codec per record kind, for the stores and for the hand-over.

Every kind round-trips in both time bases (relative: between processes; wall
clock: the stores); the golden format-1 store's records read through these
codecs; records of another version are refused with UnsupportedFormat.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import msgpack
import plyvel
import pytest

from core import records as rec
from core.message import Message
from core.records import UnsupportedFormat
from core.session import NEVER, Delivery, OutState, Session, SubOptions, Will
from mqtt import Prop

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
T0 = 1_700_000_000.0  # the wall clock tests/golden/make_golden.py wrote with
MONO = 1000.0  # its monotonic clock then

PROPS = {
    Prop.PAYLOAD_FORMAT_INDICATOR: 1,
    Prop.CONTENT_TYPE: "text/plain",
    Prop.RESPONSE_TOPIC: "r/1",
    Prop.CORRELATION_DATA: b"\x00\x01",
    Prop.USER_PROPERTY: [("a", "1"), ("a", "2")],
}
BASES = [pytest.param(rec.RELATIVE, id="relative"), pytest.param(T0, id="wall")]


def wire(v):
    """Through msgpack and back, as every record travels."""
    return msgpack.unpackb(msgpack.packb(v, use_bin_type=True), raw=False, strict_map_key=False, use_list=True)


def fields(m: Message) -> tuple:
    return (m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at, m.origin)


def full_session(now: float) -> Session:
    s = Session("c1", 300)
    s.username = "bob"
    s.subscriptions["a/#"] = SubOptions(2, True, True, 2, 7)
    s.subscriptions["$share/g/b/+"] = SubOptions(1, False, False, 1, None)
    s.will = Will(Message("w/c1", b"bye", 1, True, {Prop.USER_PROPERTY: [("k", "v")]}, 60, "c1"), 30)
    s.next_pid = 42
    s.expires_at = now + 300
    s.will_at = now + 30
    s.inflight[3] = Delivery(Message("a/1", b"p1", 2, False, dict(PROPS), now + 50, "pub"), 2, False, (7,), None,
                             OutState.PUBLISHED, 3)
    s.inflight[4] = Delivery(Message("a/2", b"p2", 2, False, {}, None, "pub"), 2, False, (7,), None, OutState.RELEASED, 4)
    s.queue.append(Delivery(Message("b/1", b"q1", 1, True, {}, None, "pub"), 1, True, (), ("g", "b/+")))
    s.queue.append(Delivery(Message("a/3", b"q2", 0, False, {}, now + 5, ""), 0, False, (7, 9)))
    s.incoming_qos2 = {9, 11}
    return s


@pytest.mark.parametrize("base", BASES)
def test_message_round_trip_moves_its_deadline_to_the_readers_clock(base):
    now = 100.0
    m = Message("t/1", b"\x00payload", 2, True, dict(PROPS), now + 30, "pub-1")
    later = 5000.0  # another process: another monotonic origin, 10 s later on the wall clock
    read_base = None if base is None else base + 10
    back = rec.message_from(wire(rec.message_record(m, now, base)), later, read_base)
    assert fields(back)[:5] == fields(m)[:5] and back.origin == "pub-1"
    expected = later + 30 if base is None else later + 20  # relative: no time passes in transit
    assert back.expires_at == pytest.approx(expected)
    assert back.properties[Prop.USER_PROPERTY] == [("a", "1"), ("a", "2")]  # pairs, not lists


def test_message_without_expiry_or_properties():
    m = Message("t", b"", 0, False, {}, None, "")
    w = rec.message_record(m, 1.0)
    assert w == ["t", b"", 0, False, None, None, ""]
    assert fields(rec.message_from(wire(w), 9.0)) == fields(m)


def test_relative_deadline_already_past_is_zero_not_negative():
    m = Message("t", b"x", 1, False, {}, 90.0, "")
    assert rec.message_record(m, 100.0)[5] == 0.0
    assert rec.message_from(rec.message_record(m, 100.0), 7.0).expired(7.0)


def test_wall_deadline_keeps_its_sign():
    m = Message("t", b"x", 1, False, {}, 90.0, "")
    assert rec.message_record(m, 100.0, T0)[5] == T0 - 10


def test_op_message_names_are_the_relative_codec():
    m = Message("t", b"x", 1, False, dict(PROPS), 130.0, "o")
    assert rec.msg_to_wire(m, 100.0) == rec.message_record(m, 100.0, rec.RELATIVE)
    assert fields(rec.msg_from_wire(wire(rec.msg_to_wire(m, 100.0)), 100.0)) == fields(m)


@pytest.mark.parametrize("opts", [SubOptions(), SubOptions(2, True, True, 2, 7), SubOptions(1, False, True, 1, 268435455)])
def test_subscription_round_trip(opts):
    assert rec.subscription_from(wire(rec.subscription_record("a/+/#", opts))) == ("a/+/#", opts)


def test_will_keeps_its_expiry_interval_and_delay():
    will = Will(Message("w", b"gone", 2, True, dict(PROPS), 3600, "c"), 45)
    back = rec.will_from(wire(rec.will_record(will)))
    assert back.delay == 45 and fields(back.message) == fields(will.message)
    assert back.message.expires_at == 3600  # an interval: not moved to any clock


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("state", list(OutState))
def test_delivery_round_trip(base, state):
    now = 10.0
    d = Delivery(Message("a", b"p", 2, False, {}, now + 4, "o"), 1, True, (3, 4), ("grp", "a/#"), state, 77)
    w = wire(rec.delivery_record(d, now, base))
    assert w[0] == rec.DELIVERY
    back = rec.delivery_from(w, None, now, base)
    assert (back.qos, back.retain, back.sub_ids, back.group, back.state, back.packet_id) == (1, True, (3, 4), ("grp", "a/#"), state, 77)
    assert back.state is state and back.msg.expires_at == pytest.approx(now + 4)
    shared = Message("a", b"p", 2, False, {}, None, "o")
    assert rec.delivery_from(w, shared).msg is shared  # a store passes the message it decoded once


@pytest.mark.parametrize("base", BASES)
def test_retained_round_trip(base):
    m = Message("r/t", b"kept", 1, True, {Prop.CONTENT_TYPE: "x"}, 70.0, "p")
    w = wire(rec.retained_record(m, 60.0, base))
    assert w[0] == rec.RETAINED
    assert rec.retained_from(w, 60.0, base).expires_at == pytest.approx(70.0)


def session_state(s: Session) -> tuple:
    return (s.client_id, s.expiry_interval, s.username, dict(s.subscriptions), s.will.delay, fields(s.will.message),
            s.next_pid)


def window_state(s: Session) -> tuple:
    def d(x):
        return (fields(x.msg), x.qos, x.retain, x.sub_ids, x.group, x.state, x.packet_id)
    return ({p: d(x) for p, x in s.inflight.items()}, [d(x) for x in s.queue], s.incoming_qos2)


@pytest.mark.parametrize("base", BASES)
def test_session_alone_leaves_its_windows_out(base):
    now = 100.0
    s = full_session(now)
    w = wire(rec.session_record(s, now, base))
    assert w[0] == rec.SESSION and len(w) == 9
    back = rec.session_from(w, now, base)
    assert session_state(back) == session_state(s)
    assert back.expires_at == pytest.approx(now + 300) and back.will_at == pytest.approx(now + 30)
    assert (back.inflight, list(back.queue), back.incoming_qos2) == ({}, [], set())


def test_session_with_windows_round_trips_whole_between_processes():
    now, later = 100.0, 9000.0
    s = full_session(now)
    w = wire(rec.session_to_wire(s, now))
    assert w[0] == rec.SESSION_WITH_WINDOWS
    assert w[1] == "c1" and [sub[0] for sub in w[4]] == ["a/#", "$share/g/b/+"]  # what the router reads of it
    back = rec.session_from_wire(w, later)
    assert session_state(back) == session_state(s)
    assert back.expires_at == pytest.approx(later + 300) and back.will_at == pytest.approx(later + 30)
    def shifted(state):  # the same window with every deadline seen on the other clock
        def d(x):
            f = list(x[0])
            f[5] = None if f[5] is None else pytest.approx(f[5] - now + later)
            return (tuple(f),) + x[1:]
        inflight, queue, qos2 = state
        return ({p: d(x) for p, x in inflight.items()}, [d(x) for x in queue], qos2)
    assert window_state(back) == shifted(window_state(s))
    assert [x.seq for x in back.queue] == [0, 0]  # not stored in the receiver's store yet
    assert back.inflight[3].msg.expires_at == pytest.approx(later + 50)


def test_offline_session_never_expiring_without_will():
    s = Session("v4", NEVER)
    s.subscriptions["x/#"] = SubOptions(1)
    back = rec.session_from_wire(wire(rec.session_to_wire(s, 1.0)), 2.0)
    assert (back.expiry_interval, back.will, back.expires_at, back.will_at) == (NEVER, None, None, None)


def test_hand_over_in_the_order_before_one_codec_is_refused():
    old = [1, "c1", 300, None, [], [], [], [], None, 1, None]  # [1, cid, expiry, user, subs, inflight, queue, ...]
    with pytest.raises(UnsupportedFormat, match="hand-over"):
        rec.session_from_wire(old, 0.0)


@pytest.mark.parametrize("decode, record", [
    (lambda w: rec.session_from(w, 0.0), [99, "c", 0, None, [], None, 1, None, None]),
    (lambda w: rec.delivery_from(w, None, 0.0), [2, ["t", b"", 0, False, None, None, ""], 0, False, [], None, 0, 1]),
    (lambda w: rec.retained_from(w, 0.0), [7, ["t", b"x", 0, True, None, None, ""]]),
    (lambda w: rec.session_from(w, 0.0), []),
])
def test_other_versions_are_refused(decode, record):
    with pytest.raises(UnsupportedFormat, match="version"):
        decode(record)


def test_golden_format_1_records_read_through_the_codecs(tmp_path):
    """The records tests/golden/store-v1 holds (written before core/records.py) decode here."""
    copy = tmp_path / "golden"
    shutil.copytree(GOLDEN / "store-v1", copy)
    db = plyvel.DB(str(copy))
    try:
        def unpack(b):
            return msgpack.unpackb(b, raw=False, strict_map_key=False, use_list=True)
        sessions = {rec.session_from(unpack(v), MONO, T0).client_id: rec.session_from(unpack(v), MONO, T0)
                    for _, v in db.iterator(prefix=b"s/")}
        queued = [rec.delivery_from(unpack(v), None, MONO, T0) for _, v in db.iterator(prefix=b"q/golden-v5\0")]
        inflight = [rec.delivery_from(unpack(v), None, MONO, T0) for _, v in db.iterator(prefix=b"i/")]
        retained = {m.topic: m for m in (rec.retained_from(unpack(v), MONO, T0) for _, v in db.iterator(prefix=b"r/"))}
    finally:
        db.close()
    v5 = sessions["golden-v5"]
    assert (v5.expiry_interval, v5.username, v5.next_pid) == (NEVER, "alice", 5)
    assert v5.subscriptions == {"golden/a/#": SubOptions(2, True, True, 2, 7), "golden/b/+": SubOptions(1, False, False, 0, None)}
    assert v5.will.delay == 30 and v5.will.message.expires_at == 60
    assert v5.will.message.properties == {Prop.CONTENT_TYPE: "text/plain", Prop.USER_PROPERTY: [("k", "v")]}
    assert sessions["golden-v4"].subscriptions == {"golden/#": SubOptions(1)}
    assert [d.msg.topic for d in queued] == ["golden/a/1", "golden/a/2", "golden/b/x"]
    assert queued[1].msg.properties == {**PROPS, Prop.RESPONSE_TOPIC: "golden/reply"} and queued[1].retain is True
    assert queued[1].msg.expires_at == pytest.approx(MONO + (4_102_444_800.0 - T0))  # its 2100 deadline
    assert sorted((d.packet_id, d.state) for d in inflight if d.msg.topic.startswith("golden/a/")) == [
        (1, OutState.PUBLISHED), (2, OutState.RELEASED)]
    assert retained, "the golden store holds retained messages"
