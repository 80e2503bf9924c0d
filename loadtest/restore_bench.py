"""Time to restore a worker's store: ``python -m loadtest.restore_bench``.

Builds a store of N persistent sessions (default 100,000), each with one
subscription and Q queued QoS 1 messages (default 10), written fast through
the Store API (sync off, one batch per 1,000 sessions). Then it times, in a
fresh Store on the same directory:

- open: Store(path) (format and lock checks),
- restore: load_sessions + load_retained + Broker.restore, the work a worker
  does before it serves (target: under 2 s per worker),
- reconnect: every session's queue materialised as if every client came back
  (queues are read lazily, on first use, not at start).

Layouts: ``--messages shared`` (default) is a fan-out: the sessions form
groups of 100 subscribed to one topic each, and each group's 10 messages are
queued for its 100 members (one message, many queue entries);
``--messages distinct`` gives every session messages of its own.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import tempfile
import time

from common.settings import Settings
from core.kv import quiet_gc
from core.message import Message
from core.session import Delivery, Session, SubOptions
# a benchmark of the worker's own restore: it builds a worker's store and times its Broker reading it
from worker.bridge import LocalBridge
from worker.broker import Broker
from worker.store import Store

GROUP = 100  # sessions per topic in the shared layout


def build(path: str, sessions: int, queued: int, payload: int, shared: bool) -> float:
    t0 = time.perf_counter()
    store = Store(path, "off")
    now = time.monotonic()
    body = b"x" * payload
    group_msgs: dict[int, list[Message]] = {}
    for i in range(sessions):
        g = i // GROUP if shared else i
        s = Session(f"bench-{i:07d}", 3600)
        s.expires_at = now + 3600  # offline since its client disconnected
        s.subscriptions[f"bench/{g}/+"] = SubOptions(1)
        store.save_session(s, now)
        msgs = group_msgs.get(g) if shared else None
        if msgs is None:
            msgs = [Message(f"bench/{g}/{k}", body, 1, False, {}, None, "bench-pub") for k in range(queued)]
            if shared:
                group_msgs = {g: msgs}
        for m in msgs:
            store.queued(s, Delivery(m, 1, False), now)
        if i % 1_000 == 999:
            store.flush()
    store.close()
    return time.perf_counter() - t0


class Phases:
    """Wall and CPU seconds of each phase of one restore."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._t = (time.perf_counter(), time.process_time())

    def mark(self, name: str) -> None:
        w, c = time.perf_counter(), time.process_time()
        self.wall[name] = w - self._t[0]
        self.cpu[name] = c - self._t[1]
        self._t = (w, c)


def restore(path: str, profile: bool, queues: bool) -> tuple[Phases, int, int]:
    """What a worker does before it serves, then (optionally) every queue read."""
    ph = Phases()
    store = Store(path, "batch")
    ph.mark("open")
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    broker = Broker(Settings(workers=1), time.monotonic, None, LocalBridge(), 1)
    broker.store = store
    with quiet_gc():
        now = time.monotonic()
        sessions = store.load_sessions(now)
        retained = store.load_retained(now)
        broker.restore(sessions, retained)
        store.flush()
    ph.mark("restore")
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    store.ready()
    ph.mark("ready")
    if queues:
        for s in broker.sessions.values():
            broker.load_queue(s)
        ph.mark("queues")
    queued = sum(len(s.queue) for s in broker.sessions.values())
    n = len(broker.sessions)
    store.close()
    return ph, n, queued


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.restore_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--queued", type=int, default=10, help="queued messages per session")
    ap.add_argument("--payload", type=int, default=64, help="payload bytes per message")
    ap.add_argument("--messages", choices=("shared", "distinct"), default="shared")
    ap.add_argument("--repeat", type=int, default=3, help="restores timed (the best is reported)")
    ap.add_argument("--no-queues", action="store_true", help="skip reading every queue after the restore")
    ap.add_argument("--dir", help="store directory (default: a temporary one, removed after); "
                                  "an existing store there is reused as it is")
    ap.add_argument("--profile", action="store_true", help="cProfile the restore step")
    args = ap.parse_args(argv)
    tmp = None
    path = args.dir
    if path is None:
        tmp = tempfile.mkdtemp(prefix="shoal-restore-bench-")
        path = os.path.join(tmp, "worker-1")
    try:
        if os.path.exists(os.path.join(path, "CURRENT")):
            print(f"reusing the store in {path}")
        else:
            built = build(path, args.sessions, args.queued, args.payload, args.messages == "shared")
            print(f"built {args.sessions} sessions x {args.queued} queued ({args.messages} messages) in {built:.2f} s")
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
        print(f"{size / 1e6:.1f} MB on disk; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        runs = []
        for i in range(max(1, args.repeat)):
            last = i == max(1, args.repeat) - 1
            ph, n, queued = restore(path, args.profile and last, last and not args.no_queues)
            runs.append(ph)
        best = min(runs, key=lambda ph: ph.wall["restore"])
        print(f"restored {n} sessions; {queued} queued messages read afterwards" if not args.no_queues
              else f"restored {n} sessions")
        print(f"best of {len(runs)} (wall / cpu seconds):")
        rows = [("open: lock, private copy, format check", "open"),
                ("restore: load_sessions + load_retained + Broker.restore (target < 2 s per worker)", "restore"),
                ("store opened for writing", "ready")]
        for label, key in rows:
            print(f"  {label}: {best.wall[key]:.3f} / {best.cpu[key]:.3f}")
        total_w = sum(best.wall[k] for _, k in rows)
        total_c = sum(best.cpu[k] for _, k in rows)
        print(f"  before serving, in all: {total_w:.3f} / {total_c:.3f}")
        if "queues" in runs[-1].wall:
            print(f"  every queue read afterwards, as if every client reconnected (last run): "
                  f"{runs[-1].wall['queues']:.3f} / {runs[-1].cpu['queues']:.3f}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
