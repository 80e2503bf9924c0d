"""Process-level guarantees shared by every process of a node."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal

PR_SET_PDEATHSIG = 1
# -- routercpu (issue 10): the cyclic collector on the data path -------------------------------
GC_GEN0 = 20_000  # allocations between two young collections (Python's default: 700)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """End this process when its parent (circusd) ends, however it ends.

    circusd forwards SIGTERM to its children when it is stopped, but a circusd
    killed with SIGKILL (an OOM killer, an operator) cannot: without this, the
    workers and the router would go on serving the MQTT port and holding their
    LevelDB stores. The kernel sends `sig` to us when the parent thread exits.
    If the parent is already gone (it died between fork and this call), exit now.
    """
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to arm
        return
    if os.getppid() != parent:
        os._exit(1)


def steady_gc() -> None:
    """Fewer passes of the cyclic collector in a process that allocates per message (router,
    worker, agent): what start-up made goes to the permanent generation (never scanned again),
    and a young collection runs every GC_GEN0 allocations instead of every 700. The data path
    frees its objects by reference counting; a young collection only walked the messages in
    flight (a router's replay window holds half a second of them), 3 to 7% of a router's CPU
    at 10,000 msg/s (py-spy --native). Cycles still go, at most GC_GEN0 objects later."""
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, g1, g2)


def children(pid: int) -> list[int]:
    """The pids of a process's children (from /proc; empty once it is gone)."""
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def cmdline(pid: int) -> str:
    """A process's command line, words joined by spaces ("" once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_kib(pid: int) -> int | None:
    """A process's resident memory in KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
