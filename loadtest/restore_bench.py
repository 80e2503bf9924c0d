"""Time to restore a worker's store: ``python -m loadtest.restore_bench``.

Builds a store of N persistent sessions (default 100,000), each with one
subscription and Q queued QoS 1 messages (default 10), written fast through
the Store API (sync off, one batch per 10,000 sessions). Then it times, in a
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
from worker.bridge import LocalBridge
from worker.broker import Broker
from worker.message import Message
from worker.session import Delivery, Session, SubOptions
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
        s.subscriptions[f"bench/{g}/+"] = SubOptions(1)
        store.save_session(s, now)
        msgs = group_msgs.get(g) if shared else None
        if msgs is None:
            msgs = [Message(f"bench/{g}/{k}", body, 1, False, {}, None, "bench-pub") for k in range(queued)]
            if shared:
                group_msgs = {g: msgs}
        for m in msgs:
            store.queued(s, Delivery(m, 1, False), now)
        if i % 10_000 == 9_999:
            store.flush()
    store.close()
    return time.perf_counter() - t0


def restore(path: str, profile: bool) -> tuple[float, float, float, Broker]:
    t0 = time.perf_counter()
    store = Store(path, "batch")
    t1 = time.perf_counter()
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    broker = Broker(Settings(workers=1), time.monotonic, None, LocalBridge(), 1)
    broker.store = store
    now = time.monotonic()
    sessions = store.load_sessions(now)
    retained = store.load_retained(now)
    broker.restore(sessions, retained)
    store.flush()
    t2 = time.perf_counter()
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    for s in broker.sessions.values():
        getattr(broker, "load_queue", lambda s: None)(s)
    t3 = time.perf_counter()
    queued = sum(len(s.queue) for s in broker.sessions.values())
    store.close()
    print(f"restored {len(broker.sessions)} sessions, {queued} queued messages")
    return t1 - t0, t2 - t1, t3 - t2, broker


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.restore_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--queued", type=int, default=10, help="queued messages per session")
    ap.add_argument("--payload", type=int, default=64, help="payload bytes per message")
    ap.add_argument("--messages", choices=("shared", "distinct"), default="shared")
    ap.add_argument("--dir", help="store directory (default: a temporary one, removed after)")
    ap.add_argument("--profile", action="store_true", help="cProfile the restore step")
    args = ap.parse_args(argv)
    tmp = None
    path = args.dir
    if path is None:
        tmp = tempfile.mkdtemp(prefix="shoal-restore-bench-")
        path = os.path.join(tmp, "worker-1")
    try:
        built = build(path, args.sessions, args.queued, args.payload, args.messages == "shared")
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
        print(f"built {args.sessions} sessions x {args.queued} queued ({args.messages} messages) in {built:.2f} s, "
              f"{size / 1e6:.1f} MB on disk")
        t_open, t_restore, t_queues, _ = restore(path, args.profile)
        print(f"open {t_open:.3f} s")
        print(f"restore (load_sessions + load_retained + Broker.restore) {t_restore:.3f} s  (target < 2 s per worker)")
        print(f"every queue materialised (as if every client reconnected) {t_queues:.3f} s")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
