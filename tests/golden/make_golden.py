"""Write the golden store directories: ``python tests/golden/make_golden.py``.

- store-v1/       a format-1 store with the content below, written through the
                  Store API with fixed clocks (tests check what loads from it);
- store-corrupt/  store-v1 with bytes of its table overwritten;
- store-v99/      store-v1 whose format record says 99 (a future Shoal).

The directories are committed: a later Shoal must still read store-v1 (or
refuse it with a clear message when the format changes, and then a
store-v2/ joins it). Run this only when adding a format version; it replaces
the three directories.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import msgpack
import plyvel

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from mqtt import Prop  # noqa: E402
from core.message import Message  # noqa: E402
from core.session import NEVER, Delivery, OutState, Session, SubOptions, Will  # noqa: E402
from worker.store import Store  # noqa: E402

T0 = 1_700_000_000.0  # wall clock when the store was written (November 2023)
MONO = 1000.0  # the writer's monotonic clock at that moment
FAR = 4_102_444_800.0  # 2100-01-01: a deadline that has not passed
PAST = T0 + 60  # a deadline that passed long ago

PROPS = {
    Prop.PAYLOAD_FORMAT_INDICATOR: 1,
    Prop.CONTENT_TYPE: "text/plain",
    Prop.RESPONSE_TOPIC: "golden/reply",
    Prop.CORRELATION_DATA: b"\x00\x01",
    Prop.USER_PROPERTY: [("a", "1"), ("a", "2")],
}


def mono_at(wall: float) -> float:
    return MONO + (wall - T0)


def write(path: Path) -> None:
    st = Store(str(path), "batch", None, mono=lambda: MONO, wall=lambda: T0)
    now = MONO

    # a v5 session that never expires, with two subscriptions, a will, a queue,
    # both kinds of outgoing inflight and two incoming QoS 2 packet ids
    v5 = Session("golden-v5", NEVER)
    v5.username = "alice"
    v5.subscriptions["golden/a/#"] = SubOptions(2, True, True, 2, 7)
    v5.subscriptions["golden/b/+"] = SubOptions(1, False, False, 0, None)
    will = Message("golden/will/v5", b"v5 gone", 1, False, {Prop.CONTENT_TYPE: "text/plain",
                                                            Prop.USER_PROPERTY: [("k", "v")]}, 60, "golden-v5")
    v5.will = Will(will, 30)
    v5.next_pid = 5
    st.save_session(v5, now)
    st.queued(v5, Delivery(Message("golden/a/1", b"one", 1, False, {}, None, "pub"), 1, False, (7,)), now)
    st.queued(v5, Delivery(Message("golden/a/2", b"two", 2, True, dict(PROPS), mono_at(FAR), "pub"), 2, True, (7,)), now)
    st.queued(v5, Delivery(Message("golden/b/x", b"three", 1, False, {}, None, "pub"), 1, False, ()), now)
    for pid, topic, payload, qos, state in ((1, "golden/a/0", b"zero", 2, OutState.PUBLISHED),
                                            (2, "golden/a/r", b"released", 2, OutState.RELEASED),
                                            (3, "golden/b/y", b"qos1 inflight", 1, OutState.PUBLISHED)):
        st.inflight(v5, Delivery(Message(topic, payload, qos, False, {}, None, "pub"), qos, False, (7,) if "/a/" in topic else (),
                                 None, state, pid), now)
    st.qos2_in(v5, 10)
    st.qos2_in(v5, 11)

    # a 3.1.1 persistent session with one queued message
    v4 = Session("golden-v4", NEVER)
    v4.subscriptions["golden/#"] = SubOptions(1)
    st.save_session(v4, now)
    st.queued(v4, Delivery(Message("golden/v4", b"for v4", 1, True, {}, None, "pub"), 1, False), now)

    # a session whose expiry passed while the node was down: ended at start, its will published
    gone = Session("golden-expired", 60)
    gone.will = Will(Message("golden/will/expired", b"expired", 1, False, {}, None, "golden-expired"), 0)
    gone.expires_at = mono_at(PAST)
    gone.will_at = mono_at(PAST)
    st.save_session(gone, now)

    # a session that expires in 2100
    later = Session("golden-later", 0xFFFFFFFE)
    later.subscriptions["golden/later"] = SubOptions(0)
    later.expires_at = mono_at(FAR)
    st.save_session(later, now)

    # retained: plain, with properties and an expiry in 2100, and one that expired
    st.set_retained(Message("golden/retained/plain", b"plain", 0, True, {}, None, "pub"), now)
    st.set_retained(Message("golden/retained/props", b"props", 1, True, dict(PROPS), mono_at(FAR), "pub"), now)
    st.set_retained(Message("golden/retained/expired", b"old", 1, True, {}, mono_at(T0 + 10), "pub"), now)
    st.close()
    # everything in one table, an empty log, no info logs: a small, stable directory
    db = plyvel.DB(str(path))
    db.compact_range(start=b"\x00", stop=b"\xff")
    db.close()
    for name in ("LOG", "LOG.old"):
        try:
            os.remove(path / name)
        except FileNotFoundError:
            pass


def main() -> None:
    v1, corrupt, v99 = HERE / "store-v1", HERE / "store-corrupt", HERE / "store-v99"
    for d in (v1, corrupt, v99):
        shutil.rmtree(d, ignore_errors=True)
    write(v1)

    # format 99: same content, a future format record
    shutil.copytree(v1, v99)
    db = plyvel.DB(str(v99))
    db.put(b"meta", msgpack.packb([99, T0]), sync=True)
    db.compact_range(start=b"\x00", stop=b"\xff")
    db.close()
    for name in ("LOG", "LOG.old"):
        try:
            os.remove(v99 / name)
        except FileNotFoundError:
            pass

    # corrupt: bytes in the middle of the table's data overwritten
    shutil.copytree(v1, corrupt)
    (table,) = [p for p in corrupt.iterdir() if p.suffix == ".ldb"]
    data = bytearray(table.read_bytes())
    mid = len(data) // 3
    data[mid:mid + 16] = b"\xff" * 16
    table.write_bytes(bytes(data))
    for d in (v1, corrupt, v99):
        print(d.name, sorted(p.name for p in d.iterdir()))


if __name__ == "__main__":
    main()
