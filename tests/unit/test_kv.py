"""core/kv.py on real LevelDB files in tmp dirs: batching, sync policy, a failed
write then the reopen, compaction. The clock is a variable the test moves."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import msgpack
import plyvel
import pytest

from core.kv import FORMAT, KV, META, StoreError

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.m, self.w = 50.0, 1_700_000_000.0

    def mono(self) -> float:
        return self.m

    def wall(self) -> float:
        return self.w


class Loop:
    """The one call KV makes of its event loop: call_soon(flush) once per batch."""

    def __init__(self) -> None:
        self.soon: list = []

    def call_soon(self, fn):
        self.soon.append(fn)
        return self

    def cancel(self) -> None:
        pass

    def run_once(self) -> None:
        soon, self.soon = self.soon, []
        for fn in soon:
            fn()


def open_kv(path: Path, clock: Clock, sync: str = "batch", loop=None) -> KV:
    return KV(str(path), sync, loop, mono=clock.mono, wall=clock.wall)


def on_disk(path: Path, key: bytes) -> bytes | None:
    """What another opener of the directory reads (a copy: the original stays locked)."""
    copy = path.parent / (path.name + ".peek")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns("LOCK"))
    db = plyvel.DB(str(copy))
    try:
        return db.get(key)
    finally:
        db.close()
        shutil.rmtree(copy)


def test_a_new_store_gets_its_format_record(tmp_path):
    kv = open_kv(tmp_path / "s", Clock())
    kv.close()
    db = plyvel.DB(str(tmp_path / "s"))
    assert msgpack.unpackb(db.get(META)) == [FORMAT, 1_700_000_000.0]
    db.close()


def test_another_format_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "s"
    db = plyvel.DB(str(path), create_if_missing=True)
    db.put(META, msgpack.packb([FORMAT + 1, 0.0]))
    db.put(b"x/1", b"data")
    db.close()
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(StoreError, match=f"has format {FORMAT + 1}.*newer Shoal"):
        open_kv(path, Clock())
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert not any(p.name.endswith(".check") for p in tmp_path.iterdir())  # the private copy went


def test_one_loop_pass_is_one_write_and_acknowledgements_wait_for_it(tmp_path):
    loop = Loop()
    kv = open_kv(tmp_path / "s", Clock(), "batch", loop)
    kv.ready()
    acks = []
    kv.put(b"a/1", b"one")
    kv.put(b"a/2", b"two")
    kv.after_commit(acks.append)
    kv.delete(b"a/1")
    kv.write_group([(b"a/3", b"three"), (b"a/2", None)])
    kv.after_commit(acks.append)
    assert acks == [] and kv.writes == 0 and len(loop.soon) == 1  # one flush for the whole pass
    assert on_disk(tmp_path / "s", b"a/3") is None
    loop.run_once()
    assert acks == [True, True] and kv.writes == 1
    assert [on_disk(tmp_path / "s", k) for k in (b"a/1", b"a/2", b"a/3")] == [None, None, b"three"]
    kv.after_commit(acks.append)  # nothing pending: at once
    assert acks == [True, True, True]
    kv.close()


def test_always_writes_every_operation_on_its_own(tmp_path):
    kv = open_kv(tmp_path / "s", Clock(), "always")
    kv.ready()
    acks = []
    kv.put(b"a/1", b"one")
    kv.after_commit(acks.append)
    assert acks == [True] and kv.batch is None and kv.writes == 1
    kv.write_group([(b"a/2", b"two"), (b"a/1", None)])
    assert kv.writes == 2
    assert [on_disk(tmp_path / "s", k) for k in (b"a/1", b"a/2")] == [None, b"two"]
    kv.close()


def test_unknown_sync_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="always, batch or off"):
        open_kv(tmp_path / "s", Clock(), "sometimes")


CRASH = textwrap.dedent("""
    import os, sys
    from core.kv import KV
    kv = KV(sys.argv[1], sys.argv[2])
    kv.ready()
    kv.put(b"k/written", b"1")
    if sys.argv[2] != "always":
        kv.flush()
    kv.put(b"k/pending", b"2")  # never flushed (batch, off): lost with the process
    os._exit(0)  # as SIGKILL: no close, no flush
""")


@pytest.mark.parametrize("sync", ["always", "batch", "off"])
def test_what_was_written_survives_the_process_dying(tmp_path, sync):
    path = tmp_path / "s"
    subprocess.run([sys.executable, "-c", CRASH, str(path), sync], cwd=ROOT, check=True, timeout=60)
    kv = open_kv(path, Clock())
    assert kv.reader().get(b"k/written") == b"1"
    assert kv.reader().get(b"k/pending") == (b"2" if sync == "always" else None)
    kv.close()


FULL_DISK = textwrap.dedent("""
    import json, os, subprocess, sys
    from core.kv import KV, PROBE_INTERVAL
    mount = sys.argv[1]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "kvtest", mount], check=True)
    t = [100.0]
    kv = KV(os.path.join(mount, "s"), "batch", mono=lambda: t[0])
    kv.ready()
    out = {}
    recovered = []
    kv.on_recovered = lambda: recovered.append(kv.failed)
    kv.put(b"k/before", b"x")
    out["first"] = kv.flush()
    filler = os.path.join(mount, "filler")
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\\0" * 65536)
                f.flush()
        except OSError:
            pass
    acks = []
    kv.put(b"k/lost", b"y" * 262144)  # more than a page: it cannot fit in what is left
    kv.after_commit(acks.append)
    out["flush"] = kv.flush()
    out["acks"] = acks
    out["failed"] = kv.failed
    errors = kv.errors
    kv.put(b"k/refused", b"z")  # not even batched while failed
    out["refused"] = kv.batch is None and kv.errors == errors + 1
    t[0] += PROBE_INTERVAL
    out["probe_full"] = kv.probe()
    os.remove(filler)
    out["probe_early"] = kv.probe()  # again within PROBE_INTERVAL: not tried
    t[0] += PROBE_INTERVAL
    out["probe_room"] = kv.probe()
    out["recovered"] = recovered
    kv.put(b"k/after", b"w")
    out["after"] = kv.flush()
    kv.close()
    kv = KV(os.path.join(mount, "s"), "batch")
    out["keys"] = sorted(k.decode() for k in kv.keys(b"k/"))
    kv.close()
    print(json.dumps(out))
""")


def test_a_failed_write_refuses_more_until_probe_reopens_with_room(tmp_path):
    """A 4 MB tmpfs in a mount namespace of the test's own, filled up by a file."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the full-disk test")
    mount = tmp_path / "disk"
    mount.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(["unshare", "--map-root-user", "--mount", sys.executable, "-c", FULL_DISK, str(mount)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["first"] is True
    assert (out["flush"], out["acks"], out["failed"], out["refused"]) == (False, [False], True, True)
    assert out["probe_full"] is False and out["probe_early"] is False
    assert out["probe_room"] is True and out["recovered"] == [False]  # on_recovered once, writing again
    assert out["after"] is True
    assert out["keys"] == ["k/after", "k/before"]  # what failed and what was refused were dropped
    assert "store write failed" in r.stderr and "store writes again" in r.stderr


def table_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.iterdir() if p.suffix in (".ldb", ".sst", ".log"))


def wait_compacted(kv: KV) -> None:
    """Wait for the background compaction KV started (its future's callbacks run in
    order: ours after KV's own)."""
    done = threading.Event()
    kv._compacting.add_done_callback(lambda fut: done.set())
    assert done.wait(60), "the background compaction did not end within 60 s"
    assert kv._compacting is None


def test_enough_deletes_start_a_compaction_that_takes_them_off_the_disk(tmp_path):
    clock = Clock()
    path = tmp_path / "s"
    kv = open_kv(path, clock, "always")
    kv.ready()
    kv.compact_deletes = 50
    values = [os.urandom(300) for _ in range(60)]  # incompressible: found as they are in the tables
    for i, v in enumerate(values):
        kv.put(b"d/%03d" % i, v)
    kv.compact()  # into a table
    assert values[7] in table_bytes(path)
    for i in range(49):
        kv.delete(b"d/%03d" % i)
    assert kv.maybe_compact() is False  # 49 < 50, and the hour has not passed
    kv.delete(b"d/049")
    assert kv.maybe_compact() is True
    wait_compacted(kv)
    assert kv.compactions == 2 and kv.deletes == 0
    data = table_bytes(path)
    assert values[7] not in data and values[48] not in data and values[55] in data
    kv.close()


def test_anything_deleted_is_compacted_within_the_hour(tmp_path):
    clock = Clock()
    kv = open_kv(tmp_path / "s", clock, "always")
    kv.ready()
    assert kv.maybe_compact() is False  # nothing deleted: never
    kv.put(b"d/1", b"x")
    kv.delete(b"d/1")
    clock.m += kv.compact_interval - 1
    assert kv.maybe_compact() is False
    clock.m += 1
    assert kv.maybe_compact() is True
    wait_compacted(kv)
    assert kv.compactions == 1
    clock.m += kv.compact_interval
    assert kv.maybe_compact() is False  # nothing deleted since
    kv.close()


# -- the router's key layout on top ------------------------------------------------------------
GOLDEN = ROOT / "tests" / "golden"


def test_the_routers_store_keeps_retained_messages_across_a_reopen(tmp_path):
    from core.message import Message
    from router.keys import Store as RouterStore

    clock = Clock()
    path = tmp_path / "router"
    st = RouterStore(str(path), "batch", None, clock.mono, clock.wall)
    st.ready()
    now = clock.mono()
    st.set_retained(Message("r/a", b"a", 1, True, {}, None, "p"), now)
    st.set_retained(Message("r/b", b"b", 0, True, {}, now + 30, "p"), now)
    st.set_retained(Message("r/c", b"c", 0, True, {}, None, "p"), now)
    st.set_retained(Message("r/c", b"", 0, True, {}, None, "p"), now)  # cleared
    st.set_retained(Message("$SYS/broker/uptime", b"1", 0, True, {}, None, ""), now)  # never stored
    st.flush()
    st.resync_retained([Message("r/a", b"a2", 1, True, {}, None, "p"), Message("r/d", b"d", 0, True, {}, now + 5, "p")], now)
    st.close()

    clock.m, clock.w = 7000.0, clock.w + 10  # another process, ten seconds later
    st = RouterStore(str(path), "batch", None, clock.mono, clock.wall)
    loaded = {m.topic: m for m in st.load_retained(clock.mono())}
    st.ready()
    st.flush()
    assert {t: m.payload for t, m in loaded.items()} == {"r/a": b"a2"}  # r/d expired meanwhile, r/b resynced away
    assert st.keys(b"r/") == [b"r/r/a"]  # what expired left the store (key: r/<topic>)
    st.close()


def test_the_routers_store_reads_the_retained_of_the_golden_format_1_store(tmp_path):
    from router.keys import Store as RouterStore

    path = tmp_path / "router"
    shutil.copytree(GOLDEN / "store-v1", path)
    clock = Clock()
    clock.w = time.time()
    st = RouterStore(str(path), "batch", None, clock.mono, clock.wall)
    assert sorted(m.topic for m in st.load_retained(clock.mono())) == ["golden/retained/plain", "golden/retained/props"]
    st.close()
