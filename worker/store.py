"""LevelDB persistence of one process (plyvel): sessions, queues, inflight, retained.

Keys are typed prefixes; values are versioned msgpack arrays (format 1):

    meta                      [FORMAT, created (wall time)]
    s/<client id>             session: [1, cid, expiry, username, subs, will, next_pid, expires_at, will_at]
                              subs: [[filter, qos, no_local, retain_as_published, retain_handling, sub_id]]
                              will: [[topic, payload, qos, retain, props, expiry interval, origin], delay]
    q/<client id>\\0<seq:8>    queued delivery: [1, message, qos, retain, sub_ids, group, state, packet_id]
    i/<client id>\\0<pid:2>    inflight delivery (same record; state 1 = PUBREL sent)
    p/<client id>\\0<pid:2>    incoming QoS 2 packet id PUBREC'd, awaiting PUBREL (empty value)
    r/<topic>                 retained message: [1, message]
    message: [topic, payload, qos, retain, props, expires_at, origin]

Times are stored as wall-clock deadlines (time.time()) and turned back into the
monotonic clock on load.

Writes: `batch` (default) groups the changes of one event-loop pass into one
fsync'd write batch, and the acknowledgements that depend on it
(`after_commit`) go out once it is written; `always` writes and fsyncs every
store operation on its own; `off` groups and waits like `batch` without fsync.
Loss window: batch and always lose nothing acknowledged, also on power loss;
off loses nothing acknowledged on a crash of the process (SIGKILL), but an OS
crash or power loss may lose the writes of the last seconds (what the kernel
had not yet written back).

Opening never changes the directory before it is known to be good: the format
record and every session, inflight and retained record are read from a
private copy (hard links to the immutable tables, copies of the small
manifest and log files), so an unsupported, corrupt or locked store makes
`Store()` raise StoreError with the path and what to do, and leaves every byte
as it was. Offline queues are not read at start: a restored session reads its
queue on first use (`load_queue`), which keeps restart time proportional to
the number of sessions, not of queued messages.

A failed write (disk full, I/O error) sets `failed`: nothing more is written,
QoS 1/2 publishes are refused (v5 0x97) and QoS 0 flows, until `probe()`
(called by the worker's tick and before a QoS 1/2 publish, at most once a
second) finds room, reopens the database (LevelDB must not append to a log
whose last write failed) and writes again; `on_recovered` then writes the
worker's state anew, since the changes made meanwhile were dropped.
Deleted and expired data is reclaimed by `maybe_compact()`, called once a
second: a compaction in a background thread after COMPACT_DELETES deletes, or
hourly when anything was deleted.
"""
from __future__ import annotations

import errno
import fcntl
import gc
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import msgpack
import plyvel

from common.logs import kv

from .message import Message
from .serial import props_from_wire, props_to_wire
from .session import Delivery, OutState, Session, SubOptions, Will

log = logging.getLogger("shoal.store")

FORMAT = 1
RECORD = 1
META = b"meta"
COMPACT_DELETES = 100_000  # deletes that trigger a background compaction
COMPACT_INTERVAL = 3600.0  # seconds: compact at least this often when anything was deleted
PROBE_INTERVAL = 1.0  # seconds between attempts to recover from a failed write
CACHE_LIMIT = 50_000  # decoded messages shared between the queues read from the store
_LEVELDB_FILES = ("CURRENT", "LOCK", "LOG", "LOG.old")
_OPEN: set[str] = set()  # stores open in this process (fcntl locks do not see those)
_STATES = tuple(OutState)


@contextmanager
def quiet_gc():
    """No cyclic garbage collection while a store is read at start: the objects it
    creates are all live, and collections would scan them again and again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class StoreError(Exception):
    """The store cannot be used; the message names the path and says what to do."""


def _pack(v) -> bytes:
    return msgpack.packb(v, use_bin_type=True)


def _unpack(b: bytes):
    return msgpack.unpackb(b, raw=False, strict_map_key=False, use_list=True)


def _corrupt(path: str, detail) -> StoreError:
    return StoreError(
        f"store {path} is corrupt ({detail}). Shoal does not repair or delete data by itself and changed nothing: "
        f"stop the node, copy the directory aside and run `python -m worker.store repair <copy>`, then put the "
        f"repaired copy in place; or move the directory away to start with an empty store.")


def _locked(path: str, detail) -> StoreError:
    return StoreError(
        f"store {path} is locked by another process ({detail}): another Shoal worker or node uses the same "
        f"SHOAL_DATA_DIR. Stop that process, or give this node a SHOAL_DATA_DIR of its own.")


def _open_error(path: str, e: Exception) -> StoreError:
    text = str(e)
    if isinstance(e, plyvel.CorruptionError):
        return _corrupt(path, text)
    if "lock" in text.lower():
        return _locked(path, text)
    return StoreError(f"store {path} cannot be opened ({text}). Check the path, its permissions and the free "
                      f"disk space.")


class Store:
    def __init__(self, path: str, sync: str = "batch", loop=None, mono=time.monotonic, wall=time.time):
        if sync not in ("always", "batch", "off"):
            raise ValueError(f"sync must be always, batch or off, not {sync!r}")
        self.path = os.path.abspath(str(path))
        self.sync = sync
        self.loop = loop
        self.mono = mono
        self.wall = wall
        self.db = None  # the store itself, opened for writing after the start-up reads
        self._reader = None  # (db, dir) of the private copy the start-up reads use
        self.batch = None
        self.waiters: list = []
        self._flush_handle = None
        self.failed = False
        self.writes = 0
        self.errors = 0
        self.deletes = 0  # since the last compaction
        self.compactions = 0
        self.compact_deletes = COMPACT_DELETES
        self.compact_interval = COMPACT_INTERVAL
        self._compacted_at = mono()
        self._compactor: ThreadPoolExecutor | None = None
        self._compacting = None
        self._probed_at = float("-inf")
        self.on_recovered = None  # called when writes work again after a failure
        self._cache: dict = {}
        self._seq = int(wall() * 1000) << 16  # queue order across restarts
        if self.path in _OPEN:
            raise _locked(self.path, "already open in this process")
        os.makedirs(self.path, exist_ok=True)
        if self._has_data():
            self._open_copy()
        else:
            self._open_real()
            self.db.put(META, _pack([FORMAT, self.wall()]), sync=True)
        _OPEN.add(self.path)

    # -- opening ------------------------------------------------------------
    def _has_data(self) -> bool:
        names = [n for n in os.listdir(self.path) if n not in _LEVELDB_FILES]
        if not names:
            return False
        if not os.path.exists(os.path.join(self.path, "CURRENT")):
            raise _corrupt(self.path, f"it holds {len(names)} files but no CURRENT file; it is not a complete LevelDB "
                                      f"database")
        return True

    def _lock(self) -> int:
        """Take LevelDB's own lock (fcntl on LOCK) while the private copy is made and read."""
        fd = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise _locked(self.path, "lock held") from None
            raise StoreError(f"store {self.path} cannot be locked ({e}). Check the path and its permissions.") from None
        return fd

    def _open_copy(self) -> None:
        """Open a private copy for the start-up reads: LevelDB rewrites its manifest and
        log on every open, and may delete files it believes obsolete, so the store
        itself is opened only once its format and records have been read."""
        fd = self._lock()
        copy = os.path.join(os.path.dirname(self.path), f".{os.path.basename(self.path)}.check")
        try:
            shutil.rmtree(copy, ignore_errors=True)
            try:
                os.makedirs(copy)
                for name in os.listdir(self.path):
                    src, dst = os.path.join(self.path, name), os.path.join(copy, name)
                    if name.endswith((".ldb", ".sst")):
                        try:
                            os.link(src, dst)  # tables are immutable
                        except OSError:
                            shutil.copyfile(src, dst)
                    elif name == "CURRENT" or name.startswith("MANIFEST-") or name.endswith(".log"):
                        shutil.copyfile(src, dst)
            except OSError as e:
                raise StoreError(f"store {self.path} cannot be checked: its private copy {copy} cannot be made ({e}). "
                                 f"Check the free disk space and the permissions of {os.path.dirname(copy)}; "
                                 f"nothing was changed.") from None
            try:
                db = plyvel.DB(copy, paranoid_checks=True)
            except plyvel.Error as e:
                raise _open_error(self.path, e) from None
            self._reader = (db, copy, fd)
            fd = None
            self._check_format(db)
        except BaseException:
            self._drop_copy()
            shutil.rmtree(copy, ignore_errors=True)
            if fd is not None:
                os.close(fd)
            raise

    def _check_format(self, db) -> None:
        try:
            meta = db.get(META, verify_checksums=True)
        except plyvel.Error as e:
            raise _corrupt(self.path, e) from None
        if meta is None:
            raise StoreError(f"store {self.path} holds data but no format record: it was not written by Shoal. "
                             f"Point SHOAL_DATA_DIR at another directory (nothing was changed).")
        try:
            fmt = _unpack(meta)[0]
        except Exception:
            raise _corrupt(self.path, "unreadable format record") from None
        if fmt != FORMAT:
            newer = isinstance(fmt, int) and fmt > FORMAT
            raise StoreError(
                f"store {self.path} has format {fmt!r}; this Shoal reads format {FORMAT} only and changed nothing. "
                + ("It was written by a newer Shoal: run that version, or move the directory aside to start with an "
                   "empty store." if newer else "Move the directory aside to start with an empty store."))

    def _drop_copy(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            db, copy, fd = reader
            db.close()
            shutil.rmtree(copy, ignore_errors=True)
            if fd is not None:
                os.close(fd)  # releases our fcntl lock: do this before LevelDB takes its own

    def _open_real(self) -> None:
        self._drop_copy()
        try:
            self.db = plyvel.DB(self.path, create_if_missing=True, paranoid_checks=True)
        except plyvel.Error as e:
            raise _open_error(self.path, e) from None

    def ready(self) -> None:
        """The start-up reads are done: open the store itself for writing (before
        serving, so that the first write does not wait for LevelDB's recovery)."""
        self._writer()

    def _rdb(self):
        """The database reads use: the private copy until the store is opened; None
        while a failed store could not be reopened."""
        if self._reader is not None:
            return self._reader[0]
        if self.db is None and not self.failed:
            self._open_real()
        return self.db

    def _writer(self):
        if self.db is None:
            self._open_real()
        return self.db

    # -- write plumbing -----------------------------------------------------
    def _wb(self):
        if self.batch is None:
            self.batch = self._writer().write_batch(sync=self.sync == "batch")
            if self.loop is not None and self._flush_handle is None:
                self._flush_handle = self.loop.call_soon(self.flush)
        return self.batch

    def _refused(self) -> bool:
        """After a failed write nothing is written until probe() reopens the store
        (called between operations: by the tick, and before a QoS 1/2 publish)."""
        if self.failed:
            self.errors += 1
            return True
        return False

    def put(self, key: bytes, value: bytes) -> None:
        if self._refused():
            return
        if self.sync == "always":
            self._write_now(lambda db: db.put(key, value, sync=True))
        else:
            self._wb().put(key, value)

    def delete(self, key: bytes) -> None:
        if self._refused():
            return
        self.deletes += 1
        if self.sync == "always":
            self._write_now(lambda db: db.delete(key, sync=True))
        else:
            self._wb().delete(key)

    def _write_group(self, ops) -> None:
        """Several changes that must land together (always: one fsync'd batch)."""
        if self._refused():
            return
        if self.sync == "always":
            def write(db):
                with db.write_batch(sync=True) as wb:
                    for key, value in ops:
                        if value is None:
                            wb.delete(key)
                        else:
                            wb.put(key, value)
            self._write_now(write)
        else:
            wb = self._wb()
            for key, value in ops:
                if value is None:
                    wb.delete(key)
                else:
                    wb.put(key, value)

    def _write_now(self, fn) -> None:
        try:
            fn(self._writer())
            self.writes += 1
        except plyvel.Error as e:
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
            if self.failed:
                ok = False  # never append to the log after a failed write: drop the batch
                self.errors += 1
            else:
                try:
                    batch.write()
                    self.writes += 1
                except plyvel.Error as e:
                    ok = False
                    self._failure(e)
        waiters, self.waiters = self.waiters, []
        for fn in waiters:
            fn(ok)
        return ok

    def probe(self) -> bool:
        """After a failed write: can the store write again? Reopens the database (at most
        once per PROBE_INTERVAL, and only with room on the disk for its log)."""
        if not self.failed:
            return True
        now = self.mono()
        if now - self._probed_at < PROBE_INTERVAL or self._compacting is not None:
            return False
        self._probed_at = now
        if not self._room_to_reopen():
            return False
        try:
            if self.db is not None:
                db, self.db = self.db, None
                db.close()
            self.db = plyvel.DB(self.path, paranoid_checks=True)
            self.db.put(META, _pack([FORMAT, self.wall()]), sync=True)
        except plyvel.Error as e:
            self.errors += 1
            log.warning("store still cannot write", extra=kv(path=self.path, error=str(e)))
            return False
        self.failed = False
        log.warning("store writes again", extra=kv(path=self.path, errors=self.errors))
        if self.on_recovered is not None:
            self.on_recovered()  # what was dropped while failed is written again
        return True

    def _room_to_reopen(self) -> bool:
        """Reopening writes the memtable (as large as the logs) to a table first."""
        try:
            st = os.statvfs(self.path)
            logs = sum(e.stat().st_size for e in os.scandir(self.path) if e.name.endswith(".log"))
        except OSError:
            return False
        return st.f_bavail * st.f_frsize > logs + (1 << 20)

    def after_commit(self, fn) -> None:
        """Call fn(ok) once what was written so far is stored per the sync policy."""
        if self.batch is None:
            fn(not self.failed)
        else:
            self.waiters.append(fn)

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self.batch is not None:
            self.flush()
        if self._compactor is not None:
            self._compactor.shutdown(wait=True)
            self._compactor = None
        self._drop_copy()
        if self.db is not None:
            self.db.close()
            self.db = None
        _OPEN.discard(self.path)

    # -- compaction -----------------------------------------------------------
    def compact(self) -> None:
        """Rewrite the whole key range now: deleted and expired records leave the disk."""
        self._writer().compact_range(start=b"\x00", stop=b"\xff")
        self.compactions += 1

    def maybe_compact(self) -> bool:
        """Once a second: start a background compaction when enough was deleted."""
        if self._compacting is not None or self.failed or self.db is None or not self.deletes:
            return False
        now = self.mono()
        if self.deletes < self.compact_deletes and now - self._compacted_at < self.compact_interval:
            return False
        self.deletes = 0
        self._compacted_at = now
        if self._compactor is None:
            self._compactor = ThreadPoolExecutor(1, thread_name_prefix="store-compact")
        self._compacting = self._compactor.submit(self.compact)  # LevelDB compacts without the GIL
        self._compacting.add_done_callback(self._compacted)
        return True

    def _compacted(self, fut) -> None:
        self._compacting = None
        e = fut.exception()
        if e is not None:
            log.warning("store compaction failed", extra=kv(path=self.path, error=str(e)))

    # -- records --------------------------------------------------------------
    def _msg_out(self, m: Message, now: float) -> list:
        exp = None if m.expires_at is None else self.wall() + (m.expires_at - now)
        return [m.topic, m.payload, m.qos, m.retain, props_to_wire(m.properties), exp, m.origin]

    def _msg_in(self, w: list, now: float, wall: float) -> Message:
        topic, payload, qos, retain, props, exp, origin = w[:7]
        return Message(topic, payload, qos, retain, props_from_wire(props), None if exp is None else now + (exp - wall), origin)

    def _d_out(self, d: Delivery, now: float) -> bytes:
        return _pack([RECORD, self._msg_out(d.msg, now), d.qos, d.retain, list(d.sub_ids),
                      list(d.group) if d.group else None, int(d.state), d.packet_id])

    def _d_in(self, b: bytes, now: float, wall: float) -> Delivery:
        v = _unpack(b)
        if v[0] != RECORD:
            raise StoreError(f"store {self.path}: delivery record version {v[0]} is not supported")
        _, mw, qos, retain, sub_ids, group, state, pid = v[:8]
        # the same message queued for many sessions: one object
        props = mw[4]
        key = (mw[0], mw[1], mw[2], mw[3], mw[5], mw[6], _pack(props) if props else None)
        cache = self._cache
        msg = cache.get(key)
        if msg is None:
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            msg = cache[key] = self._msg_in(mw, now, wall)
        return Delivery(msg, qos, retain, tuple(sub_ids), tuple(group) if group else None, _STATES[state], pid)

    @staticmethod
    def _ck(prefix: bytes, cid: str) -> bytes:
        return prefix + cid.encode() + b"\0"

    # sessions
    def save_session(self, s: Session, now: float) -> None:
        will = None
        if s.will is not None:
            m = s.will.message  # expires_at holds the will's expiry *interval*
            will = [[m.topic, m.payload, m.qos, m.retain, props_to_wire(m.properties), m.expires_at, m.origin], s.will.delay]
        wall = self.wall()
        rec = [RECORD, s.client_id, s.expiry_interval, s.username,
               [[f, o.qos, o.no_local, o.retain_as_published, o.retain_handling, o.sub_id] for f, o in s.subscriptions.items()],
               will, s.next_pid,
               None if s.expires_at is None else wall + (s.expires_at - now),
               None if s.will_at is None else wall + (s.will_at - now)]
        self.put(b"s/" + s.client_id.encode(), _pack(rec))

    def delete_session(self, cid: str, s: Session | None = None) -> None:
        """Everything stored for cid: what is on disk, and what is still in the
        pending batch (the records of the session's own queue and windows)."""
        keys = set()
        if s is not None:
            for d in s.queue:
                if d.seq:
                    keys.add(self._ck(b"q/", cid) + d.seq.to_bytes(8, "big"))
            keys.update(self._ck(b"i/", cid) + pid.to_bytes(2, "big") for pid in s.inflight)
            keys.update(self._ck(b"p/", cid) + pid.to_bytes(2, "big") for pid in s.incoming_qos2)
        db = self._rdb()
        if db is not None:
            for prefix in (b"q/", b"i/", b"p/"):
                keys.update(db.iterator(prefix=self._ck(prefix, cid), include_value=False))
        ops = [(k, None) for k in sorted(keys)]
        ops.append((b"s/" + cid.encode(), None))  # last: a crash halfway leaves a whole session
        self.deletes += len(ops)
        self._write_group(ops)

    def queued(self, s: Session, d: Delivery, now: float) -> None:
        self._seq += 1
        d.seq = self._seq
        self.put(self._ck(b"q/", s.client_id) + d.seq.to_bytes(8, "big"), self._d_out(d, now))

    def unqueued(self, s: Session, d: Delivery) -> None:
        if d.seq:
            self.delete(self._ck(b"q/", s.client_id) + d.seq.to_bytes(8, "big"))
            d.seq = 0

    def inflight(self, s: Session, d: Delivery, now: float) -> None:
        """d enters (or changes state in) the window; replaces its queue record."""
        key = self._ck(b"i/", s.client_id) + d.packet_id.to_bytes(2, "big")
        if d.seq:
            ops = [(self._ck(b"q/", s.client_id) + d.seq.to_bytes(8, "big"), None), (key, self._d_out(d, now))]
            d.seq = 0
            self.deletes += 1
            self._write_group(ops)
        else:
            self.put(key, self._d_out(d, now))

    def acked(self, s: Session, pid: int) -> None:
        self.delete(self._ck(b"i/", s.client_id) + pid.to_bytes(2, "big"))

    def qos2_in(self, s: Session, pid: int) -> None:
        self.put(self._ck(b"p/", s.client_id) + pid.to_bytes(2, "big"), b"")

    def qos2_done(self, s: Session, pid: int) -> None:
        self.delete(self._ck(b"p/", s.client_id) + pid.to_bytes(2, "big"))

    # retained
    def set_retained(self, m: Message, now: float) -> None:
        if m.topic.startswith("$SYS/"):
            return  # broker figures are published anew after a restart
        if m.payload:
            self.put(b"r/" + m.topic.encode(), _pack([RECORD, self._msg_out(m, now)]))
        else:
            self.delete(b"r/" + m.topic.encode())

    def delete_retained(self, topic: str) -> None:
        self.delete(b"r/" + topic.encode())

    def resync_retained(self, messages: list[Message], now: float) -> None:
        """Make the stored retained messages exactly `messages` (after a failure)."""
        db = self._rdb()
        ops = [(k, None) for k in db.iterator(prefix=b"r/", include_value=False)] if db is not None else []
        ops += [(b"r/" + m.topic.encode(), _pack([RECORD, self._msg_out(m, now)])) for m in messages]
        self._write_group(ops)

    def _iter(self, prefix: bytes):
        """Start-up reads, with checksums verified; corruption raises StoreError."""
        try:
            yield from self._rdb().iterator(prefix=prefix, verify_checksums=True)
        except plyvel.Error as e:
            raise _corrupt(self.path, e) from None

    def load_retained(self, now: float, limit: int | None = None) -> list[Message]:
        """The retained messages; expired ones, and any beyond `limit`, are deleted."""
        out = []
        gone = []
        over = 0
        wall = self.wall()
        for key, value in self._iter(b"r/"):
            v = _unpack(value)
            if v[0] != RECORD:
                raise StoreError(f"store {self.path}: retained record version {v[0]} is not supported")
            m = self._msg_in(v[1], now, wall)
            if m.expired(now):
                gone.append(key)
            elif limit is not None and len(out) >= limit:
                gone.append(key)
                over += 1
            else:
                out.append(m)
        if over:
            log.warning("more retained messages stored than SHOAL_MAX_RETAINED_MESSAGES allows; deleted the rest",
                        extra=kv(path=self.path, limit=limit, deleted=over))
        for key in gone:
            self.delete(key)
        return out

    def load_sessions(self, now: float) -> list[Session]:
        """Every stored session with its inflight and QoS 2 state; its queue stays
        in the store until `load_queue` (queue_stored is set)."""
        sessions: dict[str, Session] = {}
        wall = self.wall()
        unpack, new_session, options = _unpack, Session, SubOptions  # (the loop runs once per session)
        try:
            for value in self._rdb().iterator(prefix=b"s/", include_key=False, verify_checksums=True):
                v = unpack(value)
                if v[0] != RECORD:
                    raise StoreError(f"store {self.path}: session record version {v[0]} is not supported")
                _, cid, expiry, username, subs, will, next_pid, expires_at, will_at = v[:9]
                s = new_session(cid, expiry)
                s.username = username
                s.queue_stored = True
                subscriptions = s.subscriptions
                for f, qos, nl, rap, rh, sid in subs:
                    subscriptions[f] = options(qos, nl, rap, rh, sid)
                if will is not None:
                    (topic, payload, qos, retain, props, interval, origin), delay = will
                    s.will = Will(Message(topic, payload, qos, retain, props_from_wire(props), interval, origin), delay)
                s.next_pid = next_pid
                if expires_at is not None:
                    s.expires_at = now + (expires_at - wall)
                if will_at is not None:
                    s.will_at = now + (will_at - wall)
                sessions[cid] = s
        except plyvel.Error as e:
            raise _corrupt(self.path, e) from None
        orphans = []
        for prefix in (b"i/", b"p/"):
            for key, value in self._iter(prefix):
                s = sessions.get(key[2:-3].decode())
                if s is None:
                    orphans.append(key)
                elif prefix == b"i/":
                    d = self._d_in(value, now, wall)
                    s.inflight[d.packet_id] = d
                else:
                    s.incoming_qos2.add(int.from_bytes(key[-2:], "big"))
        for key in orphans:  # written after their session ended, by an older Shoal
            self.delete(key)
        return list(sessions.values())

    def load_queue(self, s: Session, now: float, limit: int) -> int:
        """Read s's stored queue in front of its in-memory one; expired entries and
        entries beyond `limit` are deleted. Returns the number of entries read."""
        wall = self.wall()
        prefix = self._ck(b"q/", s.client_id)
        entries = []
        gone = []
        db = self._rdb()
        if db is None:
            return 0  # the store failed and could not be reopened: read it later
        try:
            for key, value in db.iterator(prefix=prefix, verify_checksums=True):
                d = self._d_in(value, now, wall)
                d.seq = int.from_bytes(key[-8:], "big")
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

    def keys(self, prefix: bytes = b"") -> list[bytes]:
        """Every key (tests and the check command)."""
        return list(self._rdb().iterator(prefix=prefix, include_value=False))


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
        counts = {p: len(s.keys(p.encode())) for p in ("s/", "q/", "i/", "p/", "r/")}
        for p in ("s/", "q/", "i/", "r/"):
            for _ in s._iter(p.encode()):
                pass
    except StoreError as e:
        print(e)
        return 1
    s._drop_copy()
    print(f"{path}: format {FORMAT}, {counts['s/']} sessions, {counts['q/']} queued, {counts['i/']} inflight, "
          f"{counts['p/']} incoming QoS 2, {counts['r/']} retained")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
