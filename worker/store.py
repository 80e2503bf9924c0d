"""A worker's store: its key layout on top of core/kv.py (opening and its checks,
batching, sync policy, failure and reopen, compaction are there).

Keys are named prefixes, one key function per kind; values are the records of
core/records.py (times as wall-clock deadlines, turned back into the monotonic
clock on load):

    meta                        [FORMAT, created]                     (core/kv.py)
    s/<client id>               session record (SESSION: without its windows)
    q/<client id>\\0<seq:8>      queued delivery record
    i/<client id>\\0<pid:2>      inflight delivery record (state 1 = PUBREL sent)
    p/<client id>\\0<pid:2>      incoming QoS 2 packet id PUBREC'd, awaiting PUBREL (empty value)
    r/<topic>                   retained record (core/retained.py)

Offline queues are not read at start: a restored session reads its queue on
first use (`load_queue`), which keeps restart time proportional to the number
of sessions, not of queued messages. While the store has failed, QoS 1/2
publishes are refused (v5 0x97) and QoS 0 flows; `on_recovered` (the broker's
resync_store) writes the worker's state anew once it writes again.

`python -m worker.store check|repair PATH` checks a store (changing nothing) or
repairs a copy of one.
"""
from __future__ import annotations

import logging
import os
import time

import plyvel

from common.logs import kv
from core.kv import FORMAT, KV, StoreError, pack, quiet_gc, unpack  # noqa: F401 (re-exported)
from core.records import DELIVERY, UnsupportedFormat, delivery_from, delivery_record, message_from, session_from, session_record
from core.retained import RETAINED, RetainedKeys
from core.session import Delivery, Session

log = logging.getLogger("shoal.store")

CACHE_LIMIT = 50_000  # decoded messages shared between the queues read from the store

# the key layout: a prefix per kind
SESSION = b"s/"  # s/<client id>
QUEUED = b"q/"  # q/<client id>\0<seq:8>
INFLIGHT = b"i/"  # i/<client id>\0<pid:2>
QOS2_IN = b"p/"  # p/<client id>\0<pid:2>
PREFIXES = {"sessions": SESSION, "queued": QUEUED, "inflight": INFLIGHT, "incoming QoS 2": QOS2_IN,
            "retained": RETAINED}
_WINDOWS = (QUEUED, INFLIGHT, QOS2_IN)  # the records a session owns beside its own


def session_key(cid: str) -> bytes:
    return SESSION + cid.encode()


def client_prefix(kind: bytes, cid: str) -> bytes:
    """Every key of one kind (QUEUED, INFLIGHT, QOS2_IN) of one client id."""
    return kind + cid.encode() + b"\0"


def queued_key(cid: str, seq: int) -> bytes:
    return client_prefix(QUEUED, cid) + seq.to_bytes(8, "big")


def inflight_key(cid: str, pid: int) -> bytes:
    return client_prefix(INFLIGHT, cid) + pid.to_bytes(2, "big")


def qos2_key(cid: str, pid: int) -> bytes:
    return client_prefix(QOS2_IN, cid) + pid.to_bytes(2, "big")


def client_of(kind: bytes, key: bytes) -> str:
    """The client id in an INFLIGHT or QOS2_IN key."""
    return key[len(kind):-3].decode()


def pid_of(key: bytes) -> int:
    return int.from_bytes(key[-2:], "big")


def seq_of(key: bytes) -> int:
    return int.from_bytes(key[-8:], "big")


class Store(RetainedKeys, KV):
    def __init__(self, path: str, sync: str = "batch", loop=None, mono=time.monotonic, wall=time.time):
        super().__init__(path, sync, loop, mono, wall)
        self._cache: dict = {}
        self._seq = int(self.wall() * 1000) << 16  # queue order across restarts

    def _unsupported(self, e: UnsupportedFormat) -> StoreError:
        return StoreError(f"store {self.path}: {e}")

    def _delivery(self, b: bytes, now: float, wall: float) -> Delivery:
        v = unpack(b)
        if not v or v[0] != DELIVERY:
            raise StoreError(f"store {self.path}: delivery record version {v[0] if v else None!r} is not supported")
        try:
            mw = v[1]
            # the same message queued for many sessions: one object
            props = mw[4]
            key = (mw[0], mw[1], mw[2], mw[3], mw[5], mw[6], pack(props) if props else None)
            cache = self._cache
            msg = cache.get(key)
            if msg is None:
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                msg = cache[key] = message_from(mw, now, wall)
            return delivery_from(v, msg)
        except UnsupportedFormat as e:
            raise self._unsupported(e) from None

    # -- sessions -------------------------------------------------------------
    def save_session(self, s: Session, now: float) -> None:
        self.put(session_key(s.client_id), pack(session_record(s, now, self.wall())))

    def delete_session(self, cid: str, s: Session | None = None) -> None:
        """Everything stored for cid: what is on disk, and what is still in the
        pending batch (the records of the session's own queue and windows)."""
        keys = set()
        if s is not None:
            keys.update(queued_key(cid, d.seq) for d in s.queue if d.seq)
            keys.update(inflight_key(cid, pid) for pid in s.inflight)
            keys.update(qos2_key(cid, pid) for pid in s.incoming_qos2)
        db = self.reader()
        if db is not None:
            for kind in _WINDOWS:
                keys.update(db.iterator(prefix=client_prefix(kind, cid), include_value=False))
        ops = [(k, None) for k in sorted(keys)]
        ops.append((session_key(cid), None))  # last: a crash halfway leaves a whole session
        self.deletes += len(ops)
        self.write_group(ops)

    def queued(self, s: Session, d: Delivery, now: float) -> None:
        self._seq += 1
        d.seq = self._seq
        self.put(queued_key(s.client_id, d.seq), pack(delivery_record(d, now, self.wall())))

    def unqueued(self, s: Session, d: Delivery) -> None:
        if d.seq:
            self.delete(queued_key(s.client_id, d.seq))
            d.seq = 0

    def inflight(self, s: Session, d: Delivery, now: float) -> None:
        """d enters (or changes state in) the window; replaces its queue record."""
        key = inflight_key(s.client_id, d.packet_id)
        value = pack(delivery_record(d, now, self.wall()))
        if d.seq:
            ops = [(queued_key(s.client_id, d.seq), None), (key, value)]
            d.seq = 0
            self.deletes += 1
            self.write_group(ops)
        else:
            self.put(key, value)

    def acked(self, s: Session, pid: int) -> None:
        self.delete(inflight_key(s.client_id, pid))

    def qos2_in(self, s: Session, pid: int) -> None:
        self.put(qos2_key(s.client_id, pid), b"")

    def qos2_done(self, s: Session, pid: int) -> None:
        self.delete(qos2_key(s.client_id, pid))

    # -- start-up reads -------------------------------------------------------
    def load_sessions(self, now: float) -> list[Session]:
        """Every stored session with its inflight and QoS 2 state; its queue stays
        in the store until `load_queue` (queue_stored is set)."""
        sessions: dict[str, Session] = {}
        wall = self.wall()
        for value in self.iterate(SESSION, include_key=False):
            try:
                s = session_from(unpack(value), now, wall)
            except UnsupportedFormat as e:
                raise self._unsupported(e) from None
            s.queue_stored = True
            s.on_disk = True
            sessions[s.client_id] = s
        orphans = []
        for key, value in self.iterate(INFLIGHT):
            s = sessions.get(client_of(INFLIGHT, key))
            if s is None:
                orphans.append(key)
            else:
                d = self._delivery(value, now, wall)
                s.inflight[d.packet_id] = d
        for key, _ in self.iterate(QOS2_IN):
            s = sessions.get(client_of(INFLIGHT, key))
            if s is None:
                orphans.append(key)
            else:
                s.incoming_qos2.add(pid_of(key))
        for key in orphans:  # written after their session ended, by an older Shoal
            self.delete(key)
        return list(sessions.values())

    def load_queue(self, s: Session, now: float, limit: int) -> int:
        """Read s's stored queue in front of its in-memory one; expired entries and
        entries beyond `limit` are deleted. Returns the number of entries read."""
        wall = self.wall()
        entries = []
        gone = []
        db = self.reader()
        if db is None:
            return 0  # the store failed and could not be reopened: read it later
        try:
            for key, value in db.iterator(prefix=client_prefix(QUEUED, s.client_id), verify_checksums=True):
                d = self._delivery(value, now, wall)
                d.seq = seq_of(key)
                if d.msg.expires_at is not None and now >= d.msg.expires_at:
                    gone.append(key)
                elif len(entries) + len(s.queue) >= limit:
                    gone.append(key)
                else:
                    entries.append(d)
        except plyvel.Error as e:
            log.error("cannot read a stored queue; it stays on disk", extra=kv(path=self.path, client=s.client_id, error=str(e)))
            return 0
        s.queue_stored = False
        if entries:
            if entries[-1].seq > self._seq:
                self._seq = entries[-1].seq
            s.queue.extendleft(reversed(entries))
        for key in gone:
            self.delete(key)
        return len(entries)


def main(argv: list[str] | None = None) -> int:
    """python -m worker.store check|repair PATH (check reads a private copy and changes nothing)."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("repair", "check"):
        print("usage: python -m worker.store check|repair PATH")
        return 2
    cmd, path = argv
    if cmd == "repair":
        plyvel.repair_db(path)
        print(f"repaired {path}; check it with `python -m worker.store check {path}`")
        return 0
    if not os.path.exists(os.path.join(path, "CURRENT")):
        print(f"{path}: no store here")
        return 1
    try:
        s = Store(path)
        counts = {name: len(s.keys(prefix)) for name, prefix in PREFIXES.items()}
        for prefix in (SESSION, QUEUED, INFLIGHT, RETAINED):
            for _ in s.iterate(prefix):
                pass
    except StoreError as e:
        print(e)
        return 1
    s.drop_copy()
    print(f"{path}: format {FORMAT}, {counts['sessions']} sessions, {counts['queued']} queued, "
          f"{counts['inflight']} inflight, {counts['incoming QoS 2']} incoming QoS 2, {counts['retained']} retained")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
