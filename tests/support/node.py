"""A Shoal node under circusd, started exactly as the README says."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.proc import children

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def log_tail(path, size: int = 4000) -> str:
    """The last `size` characters of a helper process's log file ("" if there is none)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")[-size:]
    except OSError:
        return ""


def end_process(proc: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- ports ------------------------------------------------------------------
# A port is picked from a range below the kernel's ephemeral range (32768-60999 here), so
# neither a bind(("", 0)) elsewhere nor a client's outgoing connection can take it between
# the pick and the node's bind. Processes that run beside each other (pytest-xdist workers,
# other checkouts' suites) share one lock file: each port handed out is a one-byte fcntl
# lock at that offset, held until the process ends, so no two of them hand out the same
# port. (Workers bind the MQTT port with SO_REUSEPORT: two nodes given one port would both
# bind it and split the connections between them, silently.) The range also stays clear
# of the blocks of free_ports_for_local_cluster (tests/support/cluster.py).
PORT_RANGE = (13000, 21000)
PORT_LOCKS = "/tmp/shoal-test-ports.lock"
_port_lock_fd: int | None = None
_ports_taken: set[int] = set()  # fcntl locks do not exclude the process holding them


def reserve_port(port: int) -> bool:
    """Take `port` for this process: False if this or another process has it, or it is bound."""
    import fcntl

    global _port_lock_fd
    if port in _ports_taken:
        return False
    if _port_lock_fd is None:
        _port_lock_fd = os.open(PORT_LOCKS, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(_port_lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
    except OSError:
        return False  # another process's
    _ports_taken.add(port)  # ours from now on, usable or not
    with socket.socket() as s:  # no SO_REUSEADDR: a port left in TIME_WAIT is skipped too
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port nobody else uses or will be handed (see PORT_RANGE)."""
    import random

    for _ in range(2000):
        port = random.randrange(*PORT_RANGE)
        if reserve_port(port):
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


def wait_for(cond, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll `cond` until it returns a truthy value, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


class Node:
    def __init__(self, workers: int = 1, data_dir: str | None = None, **settings):
        self.workers = workers
        self.wait_join = settings.pop("wait_join", True)  # a cluster node: start() waits until its agent joined
        # a tests/support/netns.py Namespace: circusd runs inside it (`ip netns exec <ns> circusd circus.ini`)
        self.netns = settings.pop("netns", None)
        self.port = settings.pop("port", None) or free_port()
        self.tmp = tempfile.mkdtemp(prefix="shoal", dir="/tmp")
        self.data_dir = data_dir or os.path.join(self.tmp, "data")
        self.env = dict(os.environ)
        self.env.update({
            "SHOAL_PORT": str(self.port),
            "SHOAL_WORKERS": str(workers),
            "SHOAL_DATA_DIR": self.data_dir,
            "SHOAL_RUN_DIR": self.tmp,
            "SHOAL_LOG_LEVEL": settings.pop("log_level", "INFO"),
        })
        for k, v in settings.items():
            self.env[f"SHOAL_{k.upper()}"] = str(v)
        self.log_path = os.path.join(self.tmp, "node.log")
        self.proc: subprocess.Popen | None = None
        self._logf = None

    # -- lifecycle --------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "Node":
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()  # no process or open file outlives a failed start
            raise
        return self

    def launch(self) -> "Node":
        """`circusd circus.ini`, not waiting for it (start() waits; start_all() starts several at once)."""
        self._log_mark = self._log_size()
        self._logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*(self.netns.exec_prefix() if self.netns else []), str(VENV_BIN / "circusd"), "circus.ini"],
            cwd=ROOT, env=self.env,
            stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every worker serving (and registered with the router when there are several)."""
        mark = self._log_mark
        clustered = bool(self.env.get("SHOAL_ETCD_ENDPOINTS") or self.env.get("SHOAL_ETCD_INITIAL_CLUSTER"))
        # key=value lines (the default) or SHOAL_LOG_FORMAT=json lines (same fields, same order)
        if self.workers > 1 or clustered:  # a cluster node always has its router
            pattern = re.compile(r"worker=(\d+) event='registered with the router'"
                                 r'|"worker": "(\d+)", "event": "registered with the router"')
        else:
            pattern = re.compile(r'worker=(\d+) event=serving|"worker": "(\d+)", "event": "serving"')

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"circusd exited with {self.proc.returncode}\n{self.log()}")
            text = self.log(since=mark)
            if clustered and self.wait_join and not (
                    ("process=agent event='joined the cluster'" in text
                     or '"process": "agent", "event": "joined the cluster"' in text)
                    and ("process=agent event='registered with the router'" in text
                         or '"process": "agent", "event": "registered with the router"' in text)):
                return False  # the agent is in etcd and registered with its router
            return len({a or b for a, b in pattern.findall(text)}) >= self.workers

        try:
            wait_for(ready, timeout, 0.05, "node ready")
        except TimeoutError:
            raise TimeoutError(f"node not ready in {timeout}s; log:\n{self.log()}") from None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            if self._logf is not None and not self._logf.closed:
                self._logf.close()
            return
        children = self.children()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        for pid in children:  # nothing may outlive the node
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._logf.close()

    def kill(self) -> None:
        """SIGKILL the whole node: circusd and every process it started
        (circus puts each child in a session of its own)."""
        victims = self.children()
        os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(5)
        for pid in victims:
            wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 5, what=f"pid {pid} gone")
        self._logf.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- observation --------------------------------------------------------
    def _log_size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log(self, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def children(self) -> list[int]:
        return children(self.proc.pid)

    def listeners(self) -> str:
        """`ss` on the node's MQTT port, with the owning processes: after a failure, shows
        whether anything but this node's workers listened there."""
        try:
            return subprocess.run(["ss", "-Hltnp", f"sport = :{self.port}"], capture_output=True,
                                  text=True, timeout=10).stdout or "(none)"
        except (OSError, subprocess.SubprocessError) as e:
            return f"(ss: {e})"

    def worker_pids(self) -> dict[int, int]:
        """worker id -> pid of the live worker process."""
        live = set(self.children())
        out = {}
        found = re.findall(r"""worker=(\d+) event=serving .*?pid=(\d+)|"worker": "(\d+)", "event": "serving".*?"pid": (\d+)""", self.log())
        for w1, p1, w2, p2 in found:
            wid, pid = w1 or w2, p1 or p2
            if int(pid) in live:
                out[int(wid)] = int(pid)
        return out

    def agent_pid(self) -> int | None:
        live = set(self.children())
        pids = [int(p) for p in re.findall(r"event='agent serving' .*?pid=(\d+)", self.log()) if int(p) in live]
        return pids[-1] if pids else None

    def router_pid(self) -> int | None:
        live = set(self.children())
        found = re.findall(r"""event='router serving' .*?pid=(\d+)|"event": "router serving".*?"pid": (\d+)""", self.log())
        pids = [int(a or b) for a, b in found if int(a or b) in live]
        return pids[-1] if pids else None


def start_all(nodes: list[Node], timeout: float = 60.0) -> list[Node]:
    """Start the nodes side by side, as a cluster's hosts boot, and wait until each is ready;
    if one fails, every one is stopped."""
    try:
        for n in nodes:
            n.launch()
        for n in nodes:
            n.wait_ready(timeout)
    except BaseException:
        for n in nodes:
            n.stop()
        raise
    return nodes
