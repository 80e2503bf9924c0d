"""The brokers a benchmark compares, started and stopped by the runner.

- mosquitto: the Debian package, ``mosquitto -c <generated conf>`` on a free port.
- Shoal: ``circusd circus.ini`` from the repository root with ``SHOAL_*`` settings;
  its CPU is every process under circusd, not circusd itself.

Both get the same limits: a queue far above what a scenario can pile up
(``max_queued_messages``), and an outgoing window of 100 (``max_inflight_messages``).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from enum import IntEnum
from pathlib import Path

from loadtest.bench.procstat import CpuMeter
from mqtt import Connack, Connect, Framer, decode, encode

ROOT = Path(__file__).resolve().parents[2]  # the repository: circus.ini lives here
HOST = "127.0.0.1"
MAX_QUEUED = 1_000_000
MAX_INFLIGHT = 100
READY_TIMEOUT = 60.0


class BrokerKind(IntEnum):
    SHOAL = 1
    MOSQUITTO = 2

    @property
    def word(self) -> str:
        return self.name.lower()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def probe(port: int, timeout: float = 2.0) -> bool:
    """One MQTT 3.1.1 CONNECT answered by an accepting CONNACK."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(encode(Connect(client_id=f"bench-probe-{os.getpid()}", keepalive=10, version=4), 4))
            framer = Framer()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = s.recv(4096)
                if not data:
                    return False
                for first, body in framer.feed(data):
                    packet = decode(first, body, 4)
                    ok = isinstance(packet, Connack) and packet.reason_code == 0
                    if ok:
                        s.sendall(b"\xe0\x00")  # DISCONNECT
                    return ok
    except (OSError, ValueError):
        return False
    return False


class Broker:
    """One broker of a benchmark run. `label` names it in the figures (default: its kind);
    `env` adds SHOAL_* settings (Shoal), `conf` sets mosquitto.conf options (Mosquitto)."""
    kind: BrokerKind

    def __init__(self, workers: int, tmp: Path, label: str | None = None,
                 env: dict[str, str] | None = None, conf: dict[str, str] | None = None):
        self.workers = workers
        self.tmp = tmp
        self._label = label
        self.extra_env = env or {}
        self.extra_conf = conf or {}
        self.port = free_port()
        self.log_path = tmp / f"{self.label}.log"
        self.proc: subprocess.Popen | None = None
        self.meter: CpuMeter | None = None

    @property
    def label(self) -> str:
        return self._label or self.kind.word

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        raise NotImplementedError

    def start(self) -> None:
        argv, env, cwd = self.command()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.meter = self.make_meter()
        self.wait_ready()

    def make_meter(self) -> CpuMeter:
        return CpuMeter([self.proc.pid], include_roots=True)

    def ready_probes(self) -> int:
        """Consecutive accepted probes that count as ready."""
        return 1

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        streak = 0
        while streak < self.ready_probes():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} not accepting MQTT within {READY_TIMEOUT:.0f} s:\n{self.log_tail()}")
            if probe(self.port):
                streak += 1
            else:
                streak = 0
                time.sleep(0.1)  # the broker is still starting: try again shortly

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
            self.proc.wait(5)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Mosquitto(Broker):
    kind = BrokerKind.MOSQUITTO

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.tmp / "mosquitto.conf"
        options = {"allow_anonymous": "true", "max_queued_messages": str(MAX_QUEUED),
                   "max_inflight_messages": str(MAX_INFLIGHT), "max_connections": "-1",
                   "persistence": "false", "set_tcp_nodelay": "true", "connection_messages": "false",
                   **self.extra_conf}
        conf.write_text("\n".join([
            f"listener {self.port} {HOST}",
            *(f"{k} {v}" for k, v in options.items()),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "",
        ]))
        return [exe, "-c", str(conf)], dict(os.environ), self.tmp


class Shoal(Broker):
    kind = BrokerKind.SHOAL

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        circusd = Path(sys.executable).parent / "circusd"
        exe = str(circusd) if circusd.exists() else (shutil.which("circusd") or "circusd")
        data, run = self.tmp / "data", self.tmp / "run"
        data.mkdir(exist_ok=True)
        run.mkdir(exist_ok=True)
        env = dict(os.environ)
        env.update({
            "SHOAL_HOST": HOST,
            "SHOAL_PORT": str(self.port),
            "SHOAL_WORKERS": str(self.workers),
            "SHOAL_DATA_DIR": str(data),
            "SHOAL_RUN_DIR": str(run),
            "SHOAL_LOG_LEVEL": "WARNING",
            "SHOAL_MAX_QUEUED_MESSAGES": str(MAX_QUEUED),
            "SHOAL_MAX_INFLIGHT": str(MAX_INFLIGHT),
            **self.extra_env,
        })
        return [exe, "circus.ini"], env, ROOT

    def make_meter(self) -> CpuMeter:
        return CpuMeter([self.proc.pid], include_roots=False)  # every process under circusd, not circusd

    def ready_probes(self) -> int:
        # connections spread over the workers: several in a row so that every worker answered
        return 4 * self.workers


def make(kind: BrokerKind, workers: int, tmp: Path) -> Broker:
    return Shoal(workers, tmp) if kind is BrokerKind.SHOAL else Mosquitto(1, tmp)
