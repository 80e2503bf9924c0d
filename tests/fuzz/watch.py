"""Watching the node under fuzz from outside: its processes (a pid that goes
away means circus restarted it: a crash), circus' own view (`circusctl`), the
RSS of every process, and the errors it logged."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time

from common.proc import rss_kib
from tests.support.node import VENV_BIN, Node

WATCHERS = ("router", "worker")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Watch:
    def __init__(self, node: Node):
        self.node = node
        self.endpoint = f"ipc:///tmp/shoal-circus-{node.port}.ctl"
        self.first = self.pids()
        self.seen = set(self.first)
        self.gone: list[dict] = []  # {"t", "pid"} of every process that ended
        self.samples: list[tuple[float, int]] = []  # (seconds since start, KiB summed)
        self.t0 = time.monotonic()

    def pids(self) -> set[int]:
        return set(self.node.children())

    def poll(self) -> None:
        """Note processes that ended or appeared since the last poll, and one RSS sample."""
        now = self.pids()
        for pid in sorted(self.seen - now):
            self.gone.append({"t": round(time.monotonic() - self.t0, 1), "pid": pid})
        self.seen = now
        self.samples.append((round(time.monotonic() - self.t0, 1), self.rss()["total_kib"]))

    def rss(self) -> dict:
        per = {}
        for pid in sorted(self.pids()):
            kib = rss_kib(pid)
            if kib is not None:
                per[str(pid)] = kib
        sup = rss_kib(self.node.proc.pid) or 0
        return {"total_kib": sum(per.values()), "processes_kib": per, "circusd_kib": sup}

    def fds(self) -> int:
        return sum(open_fds(p) for p in self.pids())

    def circus(self) -> dict:
        """circus' process ids per watcher (they grow when circus starts a process again)."""
        out = {}
        for w in WATCHERS:
            try:
                r = subprocess.run([str(VENV_BIN / "circusctl"), "--endpoint", self.endpoint, "--json", "list", w],
                                   capture_output=True, text=True, timeout=20)
                out[w] = json.loads(r.stdout).get("pids") if r.returncode == 0 else f"error: {r.stderr.strip()}"
            except (subprocess.TimeoutExpired, ValueError) as e:
                out[w] = f"error: {e}"
        return out

    def log_errors(self) -> list[str]:
        """Lines of the node's log that show a defect: internal errors, tracebacks, processes exiting."""
        bad = re.compile(r"internal error|Traceback|exited with|level=error| error |\"level\": \"error\"")
        return [line for line in self.node.log().splitlines() if bad.search(line)]


# the node's own counts of what it holds, to tell state left behind from memory the node lost
GAUGES = ("shoal_connections", "shoal_sessions", "shoal_sessions_offline", "shoal_subscriptions",
          "shoal_queued_messages", "shoal_inflight_messages", "shoal_retained_messages", "shoal_router_routes",
          "shoal_router_registered_sessions", "shoal_router_claims", "shoal_router_pending_confirms",
          "shoal_router_backlog", "shoal_router_retained_messages")


def node_gauges(node: Node) -> dict | None:
    """Node-wide gauges from /metrics on the admin socket (None when this tree has none)."""
    path = os.path.join(node.tmp, f"shoal-{node.port}-admin.sock")
    if not os.path.exists(path):
        return None
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n")
            data = bytearray()
            while chunk := s.recv(65536):
                data += chunk
    except OSError as e:
        return {"error": str(e)}
    out: dict = {}
    for line in data.decode(errors="replace").partition("\r\n\r\n")[2].splitlines():
        name, _, rest = line.partition("{")
        if name in GAUGES and "worker=" not in rest:
            labels = rest.partition("}")[0]
            key = name + ("" if "direction" not in labels else "_" + labels.split('direction="')[1].split('"')[0])
            out[key] = float(line.rsplit(" ", 1)[1])
    return out
