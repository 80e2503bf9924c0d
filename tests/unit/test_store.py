"""The LevelDB store of worker/store.py: records, golden directories, refusals, limits, compaction."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import plyvel
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as hs

from common.settings import Settings
from mqtt import Prop
from worker.bridge import LocalBridge
from worker.protocol import Connection
from worker.broker import Broker
from worker.message import Message
from worker.session import NEVER, Delivery, OutState, Session, SubOptions, Will
from worker.store import Store, StoreError, main as store_main

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
T0 = 1_700_000_000.0  # the wall clock tests/golden/make_golden.py wrote with
FAR = 4_102_444_800.0

PROPS = {
    Prop.PAYLOAD_FORMAT_INDICATOR: 1,
    Prop.CONTENT_TYPE: "text/plain",
    Prop.RESPONSE_TOPIC: "golden/reply",
    Prop.CORRELATION_DATA: b"\x00\x01",
    Prop.USER_PROPERTY: [("a", "1"), ("a", "2")],
}


class Clock:
    """A clock the test moves: mono and wall advance together."""

    def __init__(self, mono: float = 100.0, wall: float = T0):
        self.m, self.w = mono, wall

    def mono(self) -> float:
        return self.m

    def wall(self) -> float:
        return self.w

    def advance(self, seconds: float) -> None:
        self.m += seconds
        self.w += seconds


def open_store(path, clock: Clock, sync: str = "batch") -> Store:
    return Store(str(path), sync, None, mono=clock.mono, wall=clock.wall)


def hashes(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def copy_golden(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / "data" / "worker-1"
    shutil.copytree(GOLDEN / name, dst)
    return dst


def msg(topic, payload=b"x", qos=1, retain=False, props=None, expires_at=None, origin="pub") -> Message:
    return Message(topic, payload, qos, retain, dict(props or {}), expires_at, origin)


def broker_on(store: Store, clock: Clock, **settings) -> Broker:
    b = Broker(Settings(workers=1, **settings), clock.mono, None, LocalBridge(), 1)
    b.store = store
    return b


# -- records ---------------------------------------------------------------------------
def test_session_round_trip_with_every_field(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    now = clock.mono()
    s = Session("c1", 300)
    s.username = "bob"
    s.subscriptions["a/#"] = SubOptions(2, True, True, 2, 7)
    s.subscriptions["$share/g/b/+"] = SubOptions(1, False, False, 1, None)
    s.will = Will(msg("w/c1", b"bye", 1, True, {Prop.USER_PROPERTY: [("k", "v")]}, 60, "c1"), 30)
    s.next_pid = 42
    s.expires_at = now + 300
    s.will_at = now + 30
    st.save_session(s, now)
    st.qos2_in(s, 9)
    st.inflight(s, Delivery(msg("a/1", b"p1", 2), 2, False, (7,), None, OutState.PUBLISHED, 3), now)
    st.inflight(s, Delivery(msg("a/2", b"p2", 2), 2, False, (7,), None, OutState.RELEASED, 4), now)
    st.inflight(s, Delivery(msg("b/1", b"p3", 1), 1, False, (), ("g", "b/+"), OutState.PUBLISHED, 5), now)
    st.close()

    clock.advance(10)  # ten seconds later, in a new process (another monotonic origin)
    clock.m = 5000.0
    st = open_store(tmp_path / "s", clock)
    (r,) = st.load_sessions(clock.mono())
    assert (r.client_id, r.expiry_interval, r.username, r.next_pid) == ("c1", 300, "bob", 42)
    assert r.subscriptions == {"a/#": SubOptions(2, True, True, 2, 7), "$share/g/b/+": SubOptions(1, False, False, 1, None)}
    assert r.will.delay == 30
    wm = r.will.message
    assert (wm.topic, wm.payload, wm.qos, wm.retain, wm.expires_at, wm.origin) == ("w/c1", b"bye", 1, True, 60, "c1")
    assert wm.properties == {Prop.USER_PROPERTY: [("k", "v")]}
    assert r.expires_at == pytest.approx(5000.0 + 290)
    assert r.will_at == pytest.approx(5000.0 + 20)
    assert r.incoming_qos2 == {9}
    assert sorted(r.inflight) == [3, 4, 5]
    assert [(d.msg.topic, d.qos, d.state, d.sub_ids, d.group) for d in r.inflight.values()] == [
        ("a/1", 2, OutState.PUBLISHED, (7,), None),
        ("a/2", 2, OutState.RELEASED, (7,), None),
        ("b/1", 1, OutState.PUBLISHED, (), ("g", "b/+")),
    ]
    assert r.queue_stored and not r.queue
    st.close()


def test_queue_keeps_order_and_is_read_on_first_use(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    s = Session("q1", NEVER)
    st.save_session(s, clock.mono())
    for i in range(20):
        st.queued(s, Delivery(msg("t", f"m{i}".encode()), 1, False), clock.mono())
    st.flush()
    st.close()
    clock.w -= 3600  # the wall clock went back an hour: new entries still queue after the old ones
    st = open_store(tmp_path / "s", clock)
    (r,) = st.load_sessions(clock.mono())
    assert not r.queue
    assert st.load_queue(r, clock.mono(), 1000) == 20
    assert not r.queue_stored
    st.queued(r, Delivery(msg("t", b"new"), 1, False), clock.mono())
    st.close()
    st = open_store(tmp_path / "s", clock)
    (r,) = st.load_sessions(clock.mono())
    st.load_queue(r, clock.mono(), 1000)
    assert [d.msg.payload for d in r.queue] == [f"m{i}".encode() for i in range(20)] + [b"new"]
    st.close()


def test_messages_shared_between_queues_are_one_object_but_different_properties_stay_apart(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    a, b = Session("a", NEVER), Session("b", NEVER)
    shared = msg("t", b"same", props={Prop.CONTENT_TYPE: "x"})
    other = msg("t", b"same", props={Prop.CONTENT_TYPE: "y"})
    for s in (a, b):
        st.save_session(s, clock.mono())
        st.queued(s, Delivery(shared, 1, False), clock.mono())
    st.queued(a, Delivery(other, 1, False), clock.mono())
    st.close()
    st = open_store(tmp_path / "s", clock)
    ra, rb = sorted(st.load_sessions(clock.mono()), key=lambda s: s.client_id)
    st.load_queue(ra, clock.mono(), 10)
    st.load_queue(rb, clock.mono(), 10)
    assert ra.queue[0].msg is rb.queue[0].msg
    assert ra.queue[1].msg is not ra.queue[0].msg
    assert [d.msg.properties[Prop.CONTENT_TYPE] for d in ra.queue] == ["x", "y"]
    st.close()


def test_retained_with_properties_and_expiry(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    now = clock.mono()
    st.set_retained(msg("r/props", b"p", 1, True, PROPS, now + 100), now)
    st.set_retained(msg("r/short", b"s", 0, True, {}, now + 5), now)
    st.set_retained(msg("r/gone", b"g", 0, True), now)
    st.set_retained(msg("r/gone", b"", 0, True), now)  # an empty payload clears it
    st.close()
    clock.advance(6)
    st = open_store(tmp_path / "s", clock)
    (m,) = st.load_retained(clock.mono())
    assert (m.topic, m.payload, m.qos, m.retain, m.properties) == ("r/props", b"p", 1, True, PROPS)
    assert m.remaining_expiry(clock.mono()) == 94
    st.flush()
    assert st.keys(b"r/") == [b"r/r/props"]  # the expired one was deleted
    st.close()


def test_retained_beyond_the_limit_are_deleted_at_load(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    for i in range(5):
        st.set_retained(msg(f"r/{i}", b"v", 0, True), clock.mono())
    st.close()
    st = open_store(tmp_path / "s", clock)
    assert [m.topic for m in st.load_retained(clock.mono(), 3)] == ["r/0", "r/1", "r/2"]
    st.flush()
    assert st.keys(b"r/") == [b"r/r/0", b"r/r/1", b"r/r/2"]
    st.close()


def test_stored_queue_beyond_the_limit_and_expired_entries_are_deleted(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    s = Session("q", NEVER)
    st.save_session(s, clock.mono())
    st.queued(s, Delivery(msg("t", b"expires", expires_at=clock.mono() + 5), 1, False), clock.mono())
    for i in range(6):
        st.queued(s, Delivery(msg("t", f"m{i}".encode()), 1, False), clock.mono())
    st.close()
    clock.advance(10)
    st = open_store(tmp_path / "s", clock)
    (r,) = st.load_sessions(clock.mono())
    assert st.load_queue(r, clock.mono(), 4) == 4
    assert [d.msg.payload for d in r.queue] == [b"m0", b"m1", b"m2", b"m3"]
    st.flush()
    assert len(st.keys(b"q/")) == 4
    st.close()


def test_delete_session_removes_records_still_in_the_pending_batch(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    s = Session("d", NEVER)
    st.save_session(s, clock.mono())
    st.queued(s, Delivery(msg("t", b"on disk"), 1, False), clock.mono())
    st.flush()
    d = Delivery(msg("t", b"pending"), 1, False)
    s.queue.append(d)
    st.queued(s, d, clock.mono())  # not written yet
    s.inflight[3] = Delivery(msg("t", b"inflight"), 1, False, (), None, OutState.PUBLISHED, 3)
    st.inflight(s, s.inflight[3], clock.mono())
    s.incoming_qos2.add(8)
    st.qos2_in(s, 8)
    st.delete_session("d", s)
    st.flush()
    assert st.keys() == [b"meta"]
    st.close()


def test_orphan_inflight_records_are_deleted_at_load(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    st.inflight(Session("nobody"), Delivery(msg("t"), 1, False, (), None, OutState.PUBLISHED, 1), clock.mono())
    st.qos2_in(Session("nobody"), 2)
    st.close()
    st = open_store(tmp_path / "s", clock)
    assert st.load_sessions(clock.mono()) == []
    st.flush()
    assert st.keys() == [b"meta"]
    st.close()


# -- sync policies -------------------------------------------------------------------------
@pytest.mark.parametrize("sync", ["always", "batch", "off"])
def test_acknowledgements_wait_for_the_write(tmp_path, sync):
    clock = Clock()
    st = open_store(tmp_path / "s", clock, sync)
    s = Session("c", NEVER)
    st.save_session(s, clock.mono())
    st.queued(s, Delivery(msg("t"), 1, False), clock.mono())
    acks = []
    st.after_commit(acks.append)
    if sync == "always":
        assert acks == [True]  # every operation was written (and fsync'd) on its own
        assert st.batch is None
    else:
        assert acks == []  # held until the loop pass's batch is written
        assert st.flush() is True
        assert acks == [True]
    st.close()
    db = plyvel.DB(str(tmp_path / "s"))
    assert sorted(k[:2] for k in db.iterator(include_value=False)) == [b"me", b"q/", b"s/"]
    db.close()


def test_unknown_sync_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sync"):
        Store(str(tmp_path / "s"), "sometimes")


# -- golden stores ------------------------------------------------------------------------
def test_golden_format_1_loads_its_content(tmp_path):
    path = copy_golden("store-v1", tmp_path)
    clock = Clock(mono=50.0, wall=time.time())
    st = open_store(path, clock)
    now = clock.mono()
    sessions = {s.client_id: s for s in st.load_sessions(now)}
    assert set(sessions) == {"golden-v5", "golden-v4", "golden-expired", "golden-later"}
    v5 = sessions["golden-v5"]
    assert (v5.expiry_interval, v5.username, v5.next_pid, v5.expires_at) == (NEVER, "alice", 5, None)
    assert v5.subscriptions == {"golden/a/#": SubOptions(2, True, True, 2, 7), "golden/b/+": SubOptions(1, False, False, 0, None)}
    wm = v5.will.message
    assert (wm.topic, wm.payload, wm.qos, wm.expires_at, v5.will.delay) == ("golden/will/v5", b"v5 gone", 1, 60, 30)
    assert wm.properties == {Prop.CONTENT_TYPE: "text/plain", Prop.USER_PROPERTY: [("k", "v")]}
    assert {pid: (d.msg.payload, d.qos, d.state) for pid, d in v5.inflight.items()} == {
        1: (b"zero", 2, OutState.PUBLISHED), 2: (b"released", 2, OutState.RELEASED), 3: (b"qos1 inflight", 1, OutState.PUBLISHED)}
    assert v5.incoming_qos2 == {10, 11}
    st.load_queue(v5, now, 1000)
    assert [(d.msg.topic, d.msg.payload, d.qos, d.retain, d.sub_ids) for d in v5.queue] == [
        ("golden/a/1", b"one", 1, False, (7,)), ("golden/a/2", b"two", 2, True, (7,)), ("golden/b/x", b"three", 1, False, ())]
    two = v5.queue[1].msg
    assert two.properties == PROPS
    assert two.remaining_expiry(now) == pytest.approx(FAR - clock.wall(), abs=1)
    assert sessions["golden-expired"].expires_at < now  # its deadline passed long ago
    later = sessions["golden-later"]
    assert later.expires_at - now == pytest.approx(FAR - clock.wall(), abs=1)
    retained = {m.topic: m for m in st.load_retained(now)}
    assert set(retained) == {"golden/retained/plain", "golden/retained/props"}  # the expired one is gone
    assert retained["golden/retained/props"].properties == PROPS
    assert retained["golden/retained/props"].qos == 1
    st.close()


def test_golden_format_1_restores_into_a_broker(tmp_path):
    """The expired session ends at start and its will reaches a session read after it."""
    path = copy_golden("store-v1", tmp_path)
    clock = Clock(mono=50.0, wall=time.time())
    st = open_store(path, clock)
    b = broker_on(st, clock)
    now = clock.mono()
    b.restore(st.load_sessions(now), st.load_retained(now))
    st.flush()
    assert set(b.sessions) == {"golden-v5", "golden-v4", "golden-later"}
    v4 = b.sessions["golden-v4"]
    assert [d.msg.payload for d in v4.queue] == [b"for v4", b"expired"]
    assert b.retained.get("golden/retained/props").payload == b"props"
    assert b"s/golden-expired" not in st.keys(b"s/")
    st.close()


@pytest.mark.parametrize("name, words", [
    ("store-corrupt", ["is corrupt", "python -m worker.store repair", "changed nothing"]),
    ("store-v99", ["has format 99", "reads format 1", "newer Shoal", "changed nothing"]),
])
def test_golden_bad_stores_are_refused_and_left_untouched(tmp_path, name, words):
    path = copy_golden(name, tmp_path)
    before = hashes(path)
    with pytest.raises(StoreError) as e:
        Store(str(path))
    text = str(e.value)
    assert str(path) in text
    for w in words:
        assert w in text
    assert hashes(path) == before
    assert sorted(os.listdir(path.parent)) == ["worker-1"]  # the private copy is gone too
    # and the check command says the same without changing anything
    assert store_main(["check", str(path)]) == 1
    assert hashes(path) == before


def test_damaged_manifest_is_refused_untouched(tmp_path):
    path = copy_golden("store-v1", tmp_path)
    (manifest,) = path.glob("MANIFEST-*")
    data = bytearray(manifest.read_bytes())
    data[20:40] = b"\x00" * 20
    manifest.write_bytes(bytes(data))
    before = hashes(path)
    with pytest.raises(StoreError, match="is corrupt"):
        Store(str(path))
    assert hashes(path) == before


def test_missing_current_file_is_refused(tmp_path):
    path = copy_golden("store-v1", tmp_path)
    os.remove(path / "CURRENT")
    before = hashes(path)
    with pytest.raises(StoreError, match="no CURRENT file"):
        Store(str(path))
    assert hashes(path) == before


def test_a_store_locked_by_another_process_is_refused(tmp_path):
    path = copy_golden("store-v1", tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import plyvel, sys; db = plyvel.DB(sys.argv[1]); print('open', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError) as e:
            Store(str(path))
        assert "locked by another process" in str(e.value) and str(path) in str(e.value)
        assert "SHOAL_DATA_DIR" in str(e.value)
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    Store(str(path)).close()  # free again: opens


def test_a_store_open_twice_in_one_process_is_refused(tmp_path):
    st = Store(str(tmp_path / "s"))
    try:
        with pytest.raises(StoreError, match="locked"):
            Store(str(tmp_path / "s"))
    finally:
        st.close()


def test_a_directory_that_is_not_a_shoal_store_is_refused(tmp_path):
    db = plyvel.DB(str(tmp_path / "s"), create_if_missing=True)
    db.put(b"something", b"else")
    db.close()
    with pytest.raises(StoreError, match="no format record"):
        Store(str(tmp_path / "s"))


def test_check_command_changes_nothing(tmp_path, capsys):
    path = copy_golden("store-v1", tmp_path)
    before = hashes(path)
    assert store_main(["check", str(path)]) == 0
    assert "4 sessions, 4 queued, 3 inflight, 2 incoming QoS 2, 3 retained" in capsys.readouterr().out
    assert hashes(path) == before


# -- compaction ---------------------------------------------------------------------------
def table_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix == ".ldb")


def test_deleted_records_leave_the_disk_after_enough_deletes(tmp_path):
    clock = Clock()
    path = tmp_path / "s"
    st = open_store(path, clock)
    st.compact_deletes = 500
    s = Session("big", NEVER)
    st.save_session(s, clock.mono())
    ds = []
    for i in range(600):
        d = Delivery(msg("t", os.urandom(1000)), 1, False)
        st.queued(s, d, clock.mono())
        ds.append(d)
    st.flush()
    st.compact()
    full = table_bytes(path)
    assert full > 500_000
    for d in ds[:400]:
        st.unqueued(s, d)
    st.flush()
    assert not st.maybe_compact()  # 400 deletes: not yet
    for d in ds[400:]:
        st.unqueued(s, d)
    st.flush()
    assert st.maybe_compact()  # 600 deletes: a compaction in the background
    assert not st.maybe_compact()  # one at a time, and the count starts again
    st.close()  # waits for it
    assert st.compactions == 2
    assert table_bytes(path) < full // 20


def test_anything_deleted_is_compacted_within_the_hour(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    st.set_retained(msg("r", b"v", 0, True), clock.mono())
    st.flush()
    assert not st.maybe_compact()  # nothing deleted
    st.delete_retained("r")
    st.flush()
    clock.advance(3599)
    assert not st.maybe_compact()
    clock.advance(1)
    assert st.maybe_compact()
    st.close()  # waits for the compaction
    assert st.compactions == 1


# -- the broker with a store ------------------------------------------------------------------
def test_broker_reads_a_restored_queue_before_queueing_more(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    b = broker_on(st, clock)
    s = Session("sub", NEVER)
    b.sessions["sub"] = s
    b.subscribe(s, "t/#", SubOptions(1))
    for i in range(3):
        b.publish(msg(f"t/{i}", f"old{i}".encode()))
    st.close()
    st = open_store(tmp_path / "s", clock)
    b = broker_on(st, clock)
    b.restore(st.load_sessions(clock.mono()), [])
    (r,) = b.sessions.values()
    assert r.queue_stored and not r.queue
    b.publish(msg("t/new", b"new"))
    assert [d.msg.payload for d in r.queue] == [b"old0", b"old1", b"old2", b"new"]
    st.close()


def test_broker_keeps_retained_within_the_limit_in_the_store_too(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    b = broker_on(st, clock, max_retained_messages=2)
    for i in range(4):
        b.publish(msg(f"r/{i}", b"v", 0, True))
    b.publish(msg("r/0", b"updated", 0, True))  # replacing one at the limit is fine
    b.publish(Message("$SYS/broker/uptime", b"1 seconds", 0, True, {}, None, ""), local_only=True)
    st.flush()
    assert st.keys(b"r/") == [b"r/r/0", b"r/r/1"]  # $SYS figures are not stored
    assert b.retained.get("r/0").payload == b"updated"
    assert len(b.retained) == 3
    st.close()


def test_broker_removes_expired_retained_from_the_store(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    b = broker_on(st, clock)
    b.publish(Message.build("r/short", b"v", 0, True, {Prop.MESSAGE_EXPIRY_INTERVAL: 5}, clock.mono()))
    st.flush()
    assert st.keys(b"r/") == [b"r/r/short"]
    clock.advance(6)
    b.tick(clock.mono())
    st.flush()
    assert st.keys(b"r/") == []
    assert b.retained.get("r/short") is None
    st.close()


def test_sessions_ending_leave_nothing_in_the_store(tmp_path):
    clock = Clock()
    st = open_store(tmp_path / "s", clock)
    b = broker_on(st, clock)
    temp = Session("temp", 0)  # expiry 0: never written
    b.sessions["temp"] = temp
    b.subscribe(temp, "t", SubOptions(1))
    persistent = Session("p", 60)
    b.sessions["p"] = persistent
    b.subscribe(persistent, "t", SubOptions(1))
    conn = Connection(b)  # the client's connection, which goes away
    persistent.conn = conn
    b.detach(persistent, conn)
    b.publish(msg("t", b"queued"))
    st.flush()
    assert st.keys(b"s/") == [b"s/p"] and len(st.keys(b"q/")) == 1
    clock.advance(61)
    b.tick(clock.mono())
    st.flush()
    assert st.keys() == [b"meta"]
    st.close()


# -- any content survives ------------------------------------------------------------------------
_text = hs.text(hs.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=8)
_props = hs.fixed_dictionaries({}, optional={
    Prop.PAYLOAD_FORMAT_INDICATOR: hs.integers(0, 1),
    Prop.CONTENT_TYPE: _text,
    Prop.RESPONSE_TOPIC: _text.filter(bool),
    Prop.CORRELATION_DATA: hs.binary(max_size=8),
    Prop.USER_PROPERTY: hs.lists(hs.tuples(_text, _text), max_size=3),
})
_delivery = hs.builds(
    lambda topic, payload, qos, retain, props, ttl, ids, group, released: (
        Message(topic, payload, qos, retain, props, None if ttl is None else 100.0 + ttl, "o"),
        qos, retain, tuple(ids), group, OutState.RELEASED if released and qos == 2 else OutState.PUBLISHED),
    _text.filter(bool), hs.binary(max_size=16), hs.integers(1, 2), hs.booleans(), _props,
    hs.none() | hs.integers(1, 10_000), hs.lists(hs.integers(1, 268_435_455), max_size=2),
    hs.none() | hs.tuples(_text.filter(bool), _text.filter(bool)), hs.booleans())


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cid=_text.filter(bool), queued=hs.lists(_delivery, max_size=6), inflight=hs.lists(_delivery, max_size=4),
       qos2=hs.sets(hs.integers(1, 65535), max_size=3))
def test_any_session_content_reads_back_as_written(tmp_path_factory, cid, queued, inflight, qos2):
    path = tmp_path_factory.mktemp("any")
    clock = Clock()
    st = open_store(path, clock)
    s = Session(cid, 77)
    st.save_session(s, clock.mono())
    for m, qos, retain, ids, group, _ in queued:
        st.queued(s, Delivery(m, qos, retain, ids, group), clock.mono())
    for pid, (m, qos, retain, ids, group, state) in enumerate(inflight, 1):
        st.inflight(s, Delivery(m, qos, retain, ids, group, state, pid), clock.mono())
    for pid in qos2:
        st.qos2_in(s, pid)
    st.close()
    clock.advance(5)
    st = open_store(path, clock)
    (r,) = st.load_sessions(clock.mono())
    st.load_queue(r, clock.mono(), 1000)

    def view(d: Delivery):
        m = d.msg
        left = None if m.expires_at is None else round(m.expires_at - clock.mono(), 6)
        return (m.topic, m.payload, m.qos, m.retain, m.properties, left, d.qos, d.retain, d.sub_ids, d.group, d.state)

    def expected(m, qos, retain, ids, group, state):
        left = None if m.expires_at is None else round(m.expires_at - 100.0 - 5, 6)
        return (m.topic, m.payload, m.qos, m.retain, m.properties, left, qos, retain, ids, group, state)

    live = [e for e in queued if e[0].expires_at is None or e[0].expires_at - 100.0 > 5]
    assert [view(d) for d in r.queue] == [expected(*e[:5], OutState.PUBLISHED) for e in live]
    assert {pid: view(d) for pid, d in r.inflight.items()} == {pid: expected(*e) for pid, e in enumerate(inflight, 1)}
    assert r.incoming_qos2 == qos2
    st.close()

