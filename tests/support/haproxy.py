"""HAProxy (the Debian package's /usr/sbin/haproxy) in front of cluster nodes, for tests.

TCP mode, round robin over the nodes' MQTT ports, one thread (so the rotation is
strict: connection i goes to node i mod n), no health checks (a check would be a
connection of its own and shift the rotation). The config is written into a
temporary directory; the frontend listens on a free loopback port. A stats page on
a second port tells which node each connection went to (`landed`).
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import tempfile
import urllib.request

from .node import end_process, free_port, log_tail, wait_for

CONFIG = """\
# written by tests/support/haproxy.py
global
    nbthread 1
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    # MQTT connections live long and may be idle up to their keepalive
    timeout client 1h
    timeout server 1h

frontend mqtt
    bind 127.0.0.1:{port}
    default_backend shoal

backend shoal
    balance roundrobin
{servers}

frontend stats
    mode http
    bind 127.0.0.1:{stats_port}
    timeout client 10s
    stats enable
    stats uri /stats
"""


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or (os.path.exists("/usr/sbin/haproxy") and "/usr/sbin/haproxy") or None


class HAProxy:
    def __init__(self, backends: dict[str, int]):
        """backends: server name (the node's name) -> MQTT port, in rotation order."""
        self.backends = dict(backends)
        self.tmp = tempfile.mkdtemp(prefix="shoal-haproxy", dir="/tmp")
        self.port = free_port()
        self.stats_port = free_port()
        self.config_path = os.path.join(self.tmp, "haproxy.cfg")
        self.log_path = os.path.join(self.tmp, "haproxy.log")
        self.proc: subprocess.Popen | None = None
        self._logf = None

    def config(self) -> str:
        servers = "\n".join(f"    server {name} 127.0.0.1:{port}" for name, port in self.backends.items())
        return CONFIG.format(port=self.port, stats_port=self.stats_port, servers=servers)

    def start(self) -> "HAProxy":
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError("haproxy is not installed (`make test` installs the Debian package as root)")
        with open(self.config_path, "w") as f:
            f.write(self.config())
        check = subprocess.run([binary, "-c", "-q", "-f", self.config_path], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its config: {check.stdout}{check.stderr}")
        self._logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary, "-db", "-f", self.config_path], stdout=self._logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._serving, 30, 0.05, "haproxy serving")
        return self

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self.proc.returncode}: {self.log()}")
        try:
            return bool(self.sessions())
        except OSError:
            return False

    def sessions(self) -> dict[str, int]:
        """Server name -> connections it was given so far (HAProxy's `stot`)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=10) as r:
            text = r.read().decode().lstrip("# ")
        out = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] == "shoal" and row["svname"] in self.backends:
                out[row["svname"]] = int(row["stot"] or 0)
        return out

    def landed(self, before: dict[str, int]) -> list[str]:
        """The servers that were given a connection since `before` (a sessions() result)."""
        now = self.sessions()
        return [name for name in self.backends for _ in range(now.get(name, 0) - before.get(name, 0))]

    def log(self) -> str:
        return log_tail(self.log_path)

    def stop(self) -> None:
        end_process(self.proc, 10)
        if self._logf is not None:
            self._logf.close()
            self._logf = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
