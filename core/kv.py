"""The key-value layer of every store of a node, over LevelDB (plyvel): opening and
its checks, batching and the sync policy, failure and reopen, compaction. It knows
no key layout: worker/store.py (a worker's sessions, queues, windows, retained) and
router/keys.py (the router's retained messages) put theirs on top. The one key it
writes itself is the format record:

    meta                      [FORMAT, created (wall time)]

Writes: `batch` (default) groups the changes of one event-loop pass into one
fsync'd write batch, and the acknowledgements that depend on it
(`after_commit`) go out once it is written; `always` writes and fsyncs every
store operation on its own; `off` groups and waits like `batch` without fsync.
Loss window: batch and always lose nothing acknowledged, also on power loss;
off loses nothing acknowledged on a crash of the process (SIGKILL), but an OS
crash or power loss may lose the writes of the last seconds (what the kernel
had not yet written back).

Opening never changes the directory before it is known to be good: the format
record and every record the start-up reads are read from a private copy (hard
links to the immutable tables, copies of the small manifest and log files), so
an unsupported, corrupt or locked store makes `KV()` raise StoreError with the
path and what to do, and leaves every byte as it was. `ready()` then opens the
store itself for writing.

A failed write (disk full, I/O error) sets `failed`: nothing more is written
until `probe()` (called by the owner between operations, at most once a
second) finds room, reopens the database (LevelDB must not append to a log
whose last write failed) and writes again; `on_recovered` then lets the owner
write its state anew, since the changes made meanwhile were dropped.
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

log = logging.getLogger("shoal.store")

FORMAT = 1  # the format record of every store: its key layout and record kinds
META = b"meta"
COMPACT_DELETES = 100_000  # deletes that trigger a background compaction
COMPACT_INTERVAL = 3600.0  # seconds: compact at least this often when anything was deleted
PROBE_INTERVAL = 1.0  # seconds between attempts to recover from a failed write
_LEVELDB_FILES = ("CURRENT", "LOCK", "LOG", "LOG.old")
_OPEN: set[str] = set()  # stores open in this process (fcntl locks do not see those)


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


def pack(v) -> bytes:
    return msgpack.packb(v, use_bin_type=True)


def unpack(b: bytes):
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


class KV:
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
        if self.path in _OPEN:
            raise _locked(self.path, "already open in this process")
        os.makedirs(self.path, exist_ok=True)
        if self._has_data():
            self._open_copy()
        else:
            self._open_real()
            self.db.put(META, pack([FORMAT, self.wall()]), sync=True)
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
            fmt = unpack(meta)[0]
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

    def write_group(self, ops) -> None:
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
            self.db.put(META, pack([FORMAT, self.wall()]), sync=True)
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

    # -- reads ----------------------------------------------------------------
    def iterate(self, prefix: bytes, include_key: bool = True):
        """Start-up reads, with checksums verified; corruption raises StoreError."""
        try:
            yield from self._rdb().iterator(prefix=prefix, include_key=include_key, verify_checksums=True)
        except plyvel.Error as e:
            raise _corrupt(self.path, e) from None

    def reader(self):
        """The database reads go to (the private copy until `ready()`); None while a
        failed store could not be reopened."""
        return self._rdb()

    def keys(self, prefix: bytes = b"") -> list[bytes]:
        """Every key under prefix (tests and the check command)."""
        return list(self._rdb().iterator(prefix=prefix, include_value=False))

    def drop_copy(self) -> None:
        """Done reading without writing (the check command): the private copy goes."""
        self._drop_copy()
