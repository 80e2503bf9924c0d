"""report.md: one section per scenario, a table row per run."""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time

from loadtest.bench.session import RunResult
from loadtest.bench.scenario import Scenario
from loadtest.options import Verb


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f}"


def _num(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=5).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        mosq = "mosquitto: not found"
    return (f"{os.cpu_count()} cores ({model or platform.machine()}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, {mosq}")


def oneline(r: RunResult) -> str:
    """The run in one line, for the terminal while the benchmark goes on."""
    head = f"{r.label}, round {r.round}:"
    if not r.groups:
        return f"{head} {'; '.join(r.problems)}"
    parts = [head]
    if r.summaries(Verb.SUB):
        lat = r.latency()
        parts.append(f"{r.delivered:,} delivered, {r.rate:,.0f} msg/s, latency p50 {_ms(lat.percentile(50))} "
                     f"p99 {_ms(lat.percentile(99))} max {_ms(lat.max)} ms,")
    if r.summaries(Verb.CONN):
        parts.append(f"{r.connections:,} connected,")
    parts.append(f"{r.errors} errors, broker {r.broker_cpu_s:.2f} CPU-s, generator {r.generator_cpu_s:.2f} CPU-s")
    if r.problems:
        parts.append(f"({len(r.problems)} problems)")
    return " ".join(parts)


def message_table(runs: list[RunResult]) -> list[str]:
    lines = ["| broker | workers | round | delivered | msgs/s | p50 ms | p90 ms | p99 ms | max ms | errors "
             "| broker CPU-s | CPU-s per 1M msgs (= CPU-µs/msg) | generator CPU-µs/msg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        if r.problems and not r.groups:
            lines.append(f"| {r.broker.word} | {r.workers} | {r.round} | did not run | | | | | | | | | |")
            continue
        lat = r.latency()
        delivered = r.delivered
        per_msg = f"{r.broker_cpu_s / delivered * 1e6:.2f}" if delivered else "n/a"
        gen = f"{r.generator_cpu_s / delivered * 1e6:.2f}" if delivered else "n/a"
        lines.append(f"| {r.broker.word} | {r.workers} | {r.round} | {_num(delivered)} | {_num(r.rate)} | "
                     f"{_ms(lat.percentile(50))} | {_ms(lat.percentile(90))} | {_ms(lat.percentile(99))} | "
                     f"{_ms(lat.max)} | {r.errors} | {r.broker_cpu_s:.2f} | {per_msg} | {gen} |")
    return lines


def connection_table(runs: list[RunResult]) -> list[str]:
    lines = ["| broker | workers | round | connected | all settled after s | connects/s | connect p50 ms "
             "| connect p99 ms | connect max ms | errors | broker CPU-s | broker CPU-ms per connection |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        conns = r.summaries(Verb.CONN)
        if not conns:
            lines.append(f"| {r.broker.word} | {r.workers} | {r.round} | did not run | | | | | | | | |")
            continue
        connected = sum(s["connected_max"] for s in conns)
        settled = max((s["settled_s"] or 0.0) for s in conns)
        connects = sum(s["connect_ms"]["count"] for s in conns)
        p50 = max(s["connect_ms"]["p50"] for s in conns)
        p99 = max(s["connect_ms"]["p99"] for s in conns)
        worst = max(s["connect_ms"]["max"] for s in conns)
        per_conn = f"{r.broker_cpu_s / connects * 1e3:.3f}" if connects else "n/a"
        lines.append(f"| {r.broker.word} | {r.workers} | {r.round} | {_num(connected)} | {settled:.2f} | "
                     f"{_num(connects / settled if settled else 0)} | {p50:.2f} | {p99:.2f} | {worst:.2f} | "
                     f"{r.errors} | {r.broker_cpu_s:.2f} | {per_conn} |")
    return lines


def section(scenario: Scenario, runs: list[RunResult], charts: dict[str, str]) -> list[str]:
    lines = [f"## {scenario.name}", "", " ".join(scenario.description.split()), "", "Generator groups:", ""]
    for i, g in enumerate(scenario.groups):
        argv = g.argv("HOST", 0, f"g{i}", scenario.duration)
        lines.append(f"- `python -m loadtest {shlex.join(argv).replace('-p 0', '-p PORT')}`")
    lines.append("")
    if any(g.verb is not Verb.CONN for g in scenario.groups):
        lines += message_table(runs)
        lines.append("")
    if any(g.verb is Verb.CONN for g in scenario.groups):
        lines += connection_table(runs)
        lines.append("")
    for r in runs:
        for p in r.problems:
            lines.append(f"- **{r.label}, round {r.round}**: {p}")
    if any(r.problems for r in runs):
        lines.append("")
    for title, path in charts.items():
        lines.append(f"![{scenario.name}: {title}]({path})")
    lines.append("")
    return lines


def render(sections: list[tuple[Scenario, list[RunResult], dict[str, str]]], note: str = "") -> str:
    lines = ["# Shoal benchmark report", "",
             f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {machine()}.", "",
             f"`{shlex.join([os.path.basename(sys.executable), '-m', 'loadtest.bench', *sys.argv[1:]])}`", "",
             "msgs/s counts messages delivered to the subscribers, from the first delivery to the last; latency runs "
             "from the publisher's send timestamp (in the payload) to the subscriber's receipt. Broker CPU-s is "
             "utime+stime from /proc of every broker process (Shoal: every process under circusd, not circusd) "
             "while the load ran; generator CPU is the load processes' own CPU time (time.process_time(), imports left "
             "out). CPU-s per million messages and CPU-µs per message are the same number. The generator and the "
             "broker share the machine's cores.", ""]
    if note:
        lines += [note, ""]
    for scenario, runs, charts in sections:
        lines += section(scenario, runs, charts)
    return "\n".join(lines)
