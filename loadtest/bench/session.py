"""One benchmark run: one scenario against one broker, from broker start to stop.

Subscribers start first; the publishers and connectors start once every
subscriber is connected and subscribed.  Broker CPU (and the generator's) is
counted from that moment until the last group has ended.  Every group stops by
itself (``--duration``, ``-L``, ``--hold``); subscribers still waiting ``drain``
seconds after the others ended get SIGINT, which makes them print their summary.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.bench.brokers import HOST, Broker, BrokerKind, make
from loadtest.bench.scenario import Group, Scenario
from loadtest.histogram import LogHistogram
from loadtest.options import Verb

SETTLE_TIMEOUT = 120.0  # seconds for a subscriber group to connect and subscribe
STOP_GRACE = 15.0  # seconds for a group to end after SIGINT


class GroupProcess:
    """``python -m loadtest <group argv>``, its output collected by two threads."""

    def __init__(self, group: Group, argv: list[str]):
        self.group = group
        self.argv = [sys.executable, "-m", "loadtest", *argv]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.settled = threading.Event()
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for t in self.readers:
            t.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)
            if line.startswith('{"settled_s"'):
                self.settled.set()
        stream.close()

    def settled_info(self) -> dict | None:
        for line in self.err:
            if line.startswith('{"settled_s"'):
                return json.loads(line)
        return None

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def interrupt(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self.readers:
            t.join(5)

    def summary(self) -> dict | None:
        for line in reversed(self.out):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    return None
        return None

    def log_tail(self, chars: int = 3000) -> str:
        return ("".join(self.err) + "".join(self.out))[-chars:]


@dataclass(slots=True)
class GroupResult:
    group: Group
    argv: list[str]
    exit_code: int | None
    summary: dict | None


@dataclass(slots=True)
class RunResult:
    scenario: str
    broker: BrokerKind
    workers: int
    round: int
    groups: list[GroupResult] = field(default_factory=list)
    broker_cpu_s: float = 0.0
    generator_cpu_s: float = 0.0
    load_start_ns: int = 0
    load_end_ns: int = 0
    cpu_series: list[tuple[float, float]] = field(default_factory=list)  # (s since load start, broker CPU %)
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.broker is BrokerKind.SHOAL:
            return f"shoal ({self.workers} worker{'s' if self.workers != 1 else ''})"
        return "mosquitto"

    def summaries_any(self) -> bool:
        return any(g.summary for g in self.groups)

    def summaries(self, verb: Verb) -> list[dict]:
        return [g.summary for g in self.groups if g.group.verb is verb and g.summary]

    @property
    def delivered(self) -> int:
        return sum(s["received"] for s in self.summaries(Verb.SUB))

    @property
    def published(self) -> int:
        return sum(s["sent"] for s in self.summaries(Verb.PUB))

    @property
    def errors(self) -> int:
        return sum(g.summary["errors"] for g in self.groups if g.summary)

    @property
    def rate(self) -> float:
        """Delivered messages per second, from the first delivery to the last."""
        subs = [s for s in self.summaries(Verb.SUB) if s["received"]]
        if not subs:
            return 0.0
        span = (max(s["last_recv_ns"] for s in subs) - min(s["first_recv_ns"] for s in subs)) / 1e9
        return self.delivered / span if span > 0 else 0.0

    def latency(self) -> LogHistogram:
        h = LogHistogram()
        for s in self.summaries(Verb.SUB):
            h.merge(LogHistogram.from_json(s["latency_hist"]))
        return h

    @property
    def connections(self) -> int:
        return sum(s["connected_max"] for s in self.summaries(Verb.CONN))

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "broker": self.broker.word, "workers": self.workers, "round": self.round,
                "broker_cpu_s": self.broker_cpu_s, "generator_cpu_s": self.generator_cpu_s,
                "load_start_ns": self.load_start_ns, "load_end_ns": self.load_end_ns, "cpu_series": self.cpu_series,
                "problems": self.problems,
                "groups": [{"verb": g.group.verb.word, "argv": g.argv, "exit_code": g.exit_code, "summary": g.summary}
                           for g in self.groups]}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_once(scenario: Scenario, kind: BrokerKind, workers: int, round_no: int, tmp: Path) -> RunResult:
    result = RunResult(scenario.name, kind, workers, round_no)
    tmp.mkdir(parents=True, exist_ok=True)
    broker = make(kind, workers, tmp)
    _say(f"[{scenario.name}] {result.label}, round {round_no}: starting the broker on port {broker.port}")
    try:
        broker.start()
    except (RuntimeError, OSError) as e:
        broker.stop()
        result.problems.append(f"broker did not start: {e}")
        _say(f"[{scenario.name}] {result.label}: {result.problems[-1]}")
        return result
    try:
        _drive(scenario, broker, result)
    finally:
        broker.stop()
    return result


def _start(group: Group, index: int, broker: Broker, scenario: Scenario, result: RunResult) -> GroupProcess:
    return GroupProcess(group, group.argv(HOST, broker.port, f"b{result.round}g{index}", scenario.duration))


def _drive(scenario: Scenario, broker: Broker, result: RunResult) -> None:
    subs = [(i, g) for i, g in enumerate(scenario.groups) if g.verb is Verb.SUB]
    drivers = [(i, g) for i, g in enumerate(scenario.groups) if g.verb is not Verb.SUB]
    sub_procs = [_start(g, i, broker, scenario, result) for i, g in subs]
    procs = list(sub_procs)
    try:
        for gp in sub_procs:
            if not gp.settled.wait(SETTLE_TIMEOUT):
                result.problems.append(f"subscribers not ready within {SETTLE_TIMEOUT:.0f} s: {gp.log_tail(500)}")
            elif (info := gp.settled_info())["ready"] < gp.group.clients:
                result.problems.append(f"only {info['ready']} of {gp.group.clients} subscribers ready")
        broker.meter.mark()
        result.load_start_ns = time.time_ns()
        load_start = time.monotonic()
        driver_procs = [_start(g, i, broker, scenario, result) for i, g in drivers]
        procs += driver_procs
        hard_stop = load_start + scenario.duration + scenario.drain + STOP_GRACE
        drain_until = None
        interrupted = False
        last_cpu, last_t = 0.0, load_start
        while any(gp.running for gp in procs):
            time.sleep(1.0)  # the sampling period of broker CPU
            now = time.monotonic()
            cpu = broker.meter.sample()
            result.cpu_series.append((round(now - load_start, 3), round(100 * (cpu - last_cpu) / (now - last_t), 1)))
            last_cpu, last_t = cpu, now
            if drain_until is None and not any(gp.running for gp in driver_procs):
                drain_until = now + scenario.drain
            if not interrupted and drain_until is not None and now >= drain_until:
                for gp in procs:
                    gp.interrupt()
                interrupted = True
            if now > hard_stop:
                result.problems.append("the run overran its duration; groups killed")
                break
        result.broker_cpu_s = broker.meter.sample()
        result.load_end_ns = time.time_ns()
    finally:
        for gp in procs:
            gp.interrupt()
        for gp in procs:
            gp.finish(STOP_GRACE)
    for gp in procs:
        summary = gp.summary()
        result.groups.append(GroupResult(gp.group, gp.argv[3:], gp.proc.returncode, summary))
        if summary is None:
            result.problems.append(f"{gp.group.verb.word} group gave no summary (exit {gp.proc.returncode}): "
                                   f"{gp.log_tail(800)}")
        else:
            result.generator_cpu_s += summary["cpu_s"]
        if summary is not None and summary["crashed"]:
            result.problems.append(f"{gp.group.verb.word} group: " + "; ".join(summary["crashed"])[:800])
