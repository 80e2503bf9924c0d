"""LevelDB persistence of one process (plyvel): sessions, queues, inflight, retained.

Keys are typed prefixes; values are versioned msgpack arrays:

    meta                      [FORMAT, created (wall time)]
    s/<client id>             session: [1, cid, expiry, username, subs, will, next_pid, expires_at, will_at]
    q/<client id>\\0<seq:8>    queued delivery: [1, delivery]
    i/<client id>\\0<pid:2>    inflight delivery: [1, delivery]
    p/<client id>\\0<pid:2>    incoming QoS 2 packet id awaiting PUBREL
    r/<topic>                 retained message: [1, message]

Times are stored as wall-clock deadlines (time.time()) and turned back into the
monotonic clock on load. Writes are grouped: one write batch per event-loop
pass (`sync=batch`, fsync'd before the acknowledgements it guards are sent),
one fsync'd write per change (`always`), or batches without fsync (`off`).
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque

import msgpack

from common.logs import kv
from mqtt import Prop

from .message import Message
from .session import Delivery, OutState, Session, SubOptions, Will

log = logging.getLogger("shoal.store")

FORMAT = 1
RECORD = 1


class StoreError(Exception):
    """The store cannot be used; the message says what to do."""


class StoreFull(Exception):
    """A write failed (disk full or I/O error)."""


def _pack(v) -> bytes:
    return msgpack.packb(v, use_bin_type=True)


def _unpack(b: bytes):
    return msgpack.unpackb(b, raw=False, strict_map_key=False)


def _props_out(props: dict):
    return {int(k): v for k, v in props.items()} if props else None


def _props_in(props) -> dict:
    if not props:
        return {}
    out = {Prop(k): v for k, v in props.items()}
    up = out.get(Prop.USER_PROPERTY)
    if up is not None:
        out[Prop.USER_PROPERTY] = [(a, b) for a, b in up]
    return out


class Store:
    def __init__(self, path: str, sync: str = "batch", loop=None, mono=time.monotonic, wall=time.time):
        import plyvel

        self.path = str(path)
        self.sync = sync
        self.loop = loop
        self.mono = mono
        self.wall = wall
        os.makedirs(self.path, exist_ok=True)
        try:
            self.db = plyvel.DB(self.path, create_if_missing=True, paranoid_checks=True)
        except plyvel.IOError as e:
            if "lock" in str(e).lower():
                raise StoreError(
                    f"store {self.path} is locked by another process ({e}). Another worker or node uses the same "
                    "SHOAL_DATA_DIR: stop it, or give this node its own SHOAL_DATA_DIR.") from None
            raise StoreError(f"store {self.path} cannot be opened: {e}. Check the path and its permissions.") from None
        except plyvel.CorruptionError as e:
            raise StoreError(
                f"store {self.path} is corrupt ({e}). Shoal does not delete data by itself: move the directory "
                f"aside to start empty, or try `python -m worker.store repair {self.path}` on a copy.") from None
        meta = self.db.get(b"meta")
        if meta is None:
            if next(self.db.iterator(include_value=False), None) is not None:
                self.db.close()
                raise StoreError(f"store {self.path} holds data but no format record: it was not written by Shoal. "
                                 "Point SHOAL_DATA_DIR at another directory.")
            self.db.put(b"meta", _pack([FORMAT, self.wall()]), sync=True)
        else:
            try:
                fmt = _unpack(meta)[0]
            except Exception:
                self.db.close()
                raise StoreError(f"store {self.path} has an unreadable format record; move it aside.") from None
            if fmt != FORMAT:
                self.db.close()
                newer = isinstance(fmt, int) and fmt > FORMAT
                raise StoreError(
                    f"store {self.path} has format {fmt!r}, this Shoal reads format {FORMAT}. "
                    + ("It was written by a newer Shoal: upgrade Shoal, or point SHOAL_DATA_DIR elsewhere."
                       if newer else "Point SHOAL_DATA_DIR elsewhere or move the directory aside."))
        self.batch = None
        self.waiters: list = []
        self._flush_handle = None
        self.failed = False
        self.writes = 0
        self.errors = 0
        self._seq = int(time.time() * 1000) << 16  # queue order across restarts

    # -- write plumbing -----------------------------------------------------
    def _wb(self):
        if self.batch is None:
            self.batch = self.db.write_batch(sync=self.sync == "batch")
            if self.loop is not None and self._flush_handle is None:
                self._flush_handle = self.loop.call_soon(self.flush)
        return self.batch

    def put(self, key: bytes, value: bytes) -> None:
        if self.sync == "always":
            self._write_now(lambda: self.db.put(key, value, sync=True))
        else:
            self._wb().put(key, value)

    def delete(self, key: bytes) -> None:
        if self.sync == "always":
            self._write_now(lambda: self.db.delete(key, sync=True))
        else:
            self._wb().delete(key)

    def _write_now(self, fn) -> None:
        try:
            fn()
            self.writes += 1
            self.failed = False
        except Exception as e:
            self._failure(e)

    def _failure(self, e) -> None:
        self.errors += 1
        if not self.failed:
            log.error("store write failed; QoS 1/2 publishes are refused with 0x97 until it recovers",
                      extra=kv(path=self.path, error=str(e)))
        self.failed = True

    def flush(self) -> bool:
        """Write the pending batch; run what waited for it. False if the write failed."""
        self._flush_handle = None
        batch, self.batch = self.batch, None
        ok = True
        if batch is not None:
            try:
                batch.write()
                self.writes += 1
                self.failed = False
            except Exception as e:
                ok = False
                self._failure(e)
        waiters, self.waiters = self.waiters, []
        for fn in waiters:
            fn(ok)
        return ok

    def probe(self) -> bool:
        """After a failed write: can the store write again?"""
        self._write_now(lambda: self.db.put(b"meta", _pack([FORMAT, self.wall()]), sync=True))
        return not self.failed

    def after_commit(self, fn) -> None:
        """Call fn(ok) once what was written so far is durable per the sync policy."""
        if self.batch is None or self.sync == "off":
            fn(not self.failed)
        else:
            self.waiters.append(fn)

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self.flush()
        self.db.close()

    # -- records --------------------------------------------------------------
    def _msg_out(self, m: Message, now: float) -> list:
        exp = None if m.expires_at is None else self.wall() + (m.expires_at - now)
        return [m.topic, m.payload, m.qos, m.retain, _props_out(m.properties), exp, m.origin]

    def _msg_in(self, w: list, now: float) -> Message:
        topic, payload, qos, retain, props, exp, origin = w[:7]
        return Message(topic, payload, qos, retain, _props_in(props), None if exp is None else now + (exp - self.wall()), origin)

    def _d_out(self, d: Delivery, now: float) -> bytes:
        return _pack([RECORD, self._msg_out(d.msg, now), d.qos, d.retain, list(d.sub_ids),
                      list(d.group) if d.group else None, int(d.state), d.packet_id])

    def _d_in(self, b: bytes, now: float, cache: dict) -> Delivery:
        v = _unpack(b)
        if v[0] != RECORD:
            raise StoreError(f"store {self.path}: delivery record version {v[0]} is not supported")
        _, mw, qos, retain, sub_ids, group, state, pid = v[:8]
        key = (mw[0], mw[1], mw[5], mw[6])  # the same message queued for many sessions: one object
        msg = cache.get(key)
        if msg is None:
            msg = cache[key] = self._msg_in(mw, now)
        return Delivery(msg, qos, retain, tuple(sub_ids), tuple(group) if group else None, OutState(state), pid)

    @staticmethod
    def _ck(prefix: bytes, cid: str) -> bytes:
        return prefix + cid.encode() + b"\0"

    # sessions
    def save_session(self, s: Session, now: float) -> None:
        will = None
        if s.will is not None:
            m = s.will.message  # expires_at holds the will's expiry *interval*
            will = [[m.topic, m.payload, m.qos, m.retain, _props_out(m.properties), m.expires_at, m.origin], s.will.delay]
        wall = self.wall()
        rec = [RECORD, s.client_id, s.expiry_interval, s.username,
               [[f, o.qos, o.no_local, o.retain_as_published, o.retain_handling, o.sub_id] for f, o in s.subscriptions.items()],
               will, s.next_pid,
               None if s.expires_at is None else wall + (s.expires_at - now),
               None if s.will_at is None else wall + (s.will_at - now)]
        self.put(b"s/" + s.client_id.encode(), _pack(rec))

    def delete_session(self, cid: str) -> None:
        for prefix in (b"q/", b"i/", b"p/"):
            for key in self.db.iterator(prefix=self._ck(prefix, cid), include_value=False):
                self.delete(key)
        self.delete(b"s/" + cid.encode())

    def queued(self, s: Session, d: Delivery, now: float) -> None:
        self._seq += 1
        d.seq = self._seq
        self.put(self._ck(b"q/", s.client_id) + d.seq.to_bytes(8, "big"), self._d_out(d, now))

    def unqueued(self, s: Session, d: Delivery) -> None:
        if d.seq:
            self.delete(self._ck(b"q/", s.client_id) + d.seq.to_bytes(8, "big"))
            d.seq = 0

    def inflight(self, s: Session, d: Delivery, now: float) -> None:
        self.put(self._ck(b"i/", s.client_id) + d.packet_id.to_bytes(2, "big"), self._d_out(d, now))

    def acked(self, s: Session, pid: int) -> None:
        self.delete(self._ck(b"i/", s.client_id) + pid.to_bytes(2, "big"))

    def qos2_in(self, s: Session, pid: int) -> None:
        self.put(self._ck(b"p/", s.client_id) + pid.to_bytes(2, "big"), b"")

    def qos2_done(self, s: Session, pid: int) -> None:
        self.delete(self._ck(b"p/", s.client_id) + pid.to_bytes(2, "big"))

    # retained
    def set_retained(self, m: Message, now: float) -> None:
        if m.payload:
            self.put(b"r/" + m.topic.encode(), _pack([RECORD, self._msg_out(m, now)]))
        else:
            self.delete(b"r/" + m.topic.encode())

    def load_retained(self, now: float) -> list[Message]:
        out = []
        for key, value in self.db.iterator(prefix=b"r/"):
            v = _unpack(value)
            if v[0] != RECORD:
                raise StoreError(f"store {self.path}: retained record version {v[0]} is not supported")
            m = self._msg_in(v[1], now)
            if m.expired(now):
                self.delete(key)
                continue
            out.append(m)
        return out

    def load_sessions(self, now: float) -> list[Session]:
        """Every stored session with its queue, inflight and QoS 2 state."""
        sessions: dict[str, Session] = {}
        for _, value in self.db.iterator(prefix=b"s/"):
            v = _unpack(value)
            if v[0] != RECORD:
                raise StoreError(f"store {self.path}: session record version {v[0]} is not supported")
            _, cid, expiry, username, subs, will, next_pid, expires_at, will_at = v[:9]
            s = Session(cid, expiry)
            s.username = username
            for f, qos, nl, rap, rh, sid in subs:
                s.subscriptions[f] = SubOptions(qos, nl, rap, rh, sid)
            if will is not None:
                (topic, payload, qos, retain, props, interval, origin), delay = will
                s.will = Will(Message(topic, payload, qos, retain, _props_in(props), interval, origin), delay)
            s.next_pid = next_pid
            wall = self.wall()
            s.expires_at = None if expires_at is None else now + (expires_at - wall)
            s.will_at = None if will_at is None else now + (will_at - wall)
            sessions[cid] = s
        cache: dict = {}
        for prefix in (b"q/", b"i/", b"p/"):
            for key, value in self.db.iterator(prefix=prefix):
                n = 8 if prefix == b"q/" else 2  # fixed-size tail after the \0 separator
                cid_b, tail = key[2:-n - 1], key[-n:]
                s = sessions.get(cid_b.decode())
                if s is None:
                    self.delete(key)  # orphan of a session deleted mid-batch
                    continue
                if prefix == b"q/":
                    d = self._d_in(value, now, cache)
                    d.seq = int.from_bytes(tail, "big")
                    s.queue.append(d)
                elif prefix == b"i/":
                    d = self._d_in(value, now, cache)
                    s.inflight[d.packet_id] = d
                else:
                    s.incoming_qos2.add(int.from_bytes(tail, "big"))
        for s in sessions.values():
            if not isinstance(s.queue, deque):
                s.queue = deque(s.queue)
        self._seq = max(self._seq, max((d.seq for s in sessions.values() for d in s.queue), default=0))
        return list(sessions.values())

    def compact(self) -> None:
        self.db.compact_range()


def main() -> None:  # python -m worker.store repair|check PATH
    import sys

    import plyvel

    if len(sys.argv) != 3 or sys.argv[1] not in ("repair", "check"):
        print("usage: python -m worker.store repair|check PATH")
        raise SystemExit(2)
    path = sys.argv[2]
    if sys.argv[1] == "repair":
        plyvel.repair_db(path)
        print(f"repaired {path}")
    else:
        s = Store(path)
        print(f"{path}: {len(s.load_sessions(time.monotonic()))} sessions, {len(s.load_retained(time.monotonic()))} retained")


if __name__ == "__main__":
    main()
