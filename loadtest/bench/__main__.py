"""``python -m loadtest.bench --scenario NAME [--workers 1,2] [--brokers shoal,mosquitto] [--out DIR]``

Runs each scenario against each broker in the same invocation, alternating
(Shoal with each worker count, mosquitto between them), and writes
``DIR/report.md``, ``DIR/results.json`` and PNG charts (with matplotlib).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from itertools import zip_longest
from pathlib import Path

from loadtest.bench import charts, report
from loadtest.bench.brokers import BrokerKind
from loadtest.bench.scenario import Scenario, load, names
from loadtest.bench.session import RunResult, run_once
from loadtest.proc import raise_fd_limit


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench",
                                description=" ".join(__doc__.split("\n\n")[1].split()))
    p.add_argument("--scenario", default="all", help="scenario name(s), comma separated, or 'all' (default: all)")
    p.add_argument("--workers", default="1,2", help="Shoal worker counts, comma separated (default: 1,2)")
    p.add_argument("--brokers", default="shoal,mosquitto", help="brokers, comma separated (default: shoal,mosquitto)")
    p.add_argument("--rounds", type=int, default=1, help="times to run each broker (default: 1)")
    p.add_argument("--out", default="bench-results", help="directory for report.md, results.json and charts")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply message counts and durations (e.g. 0.1 for a quick look)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return p


def plan(brokers: list[BrokerKind], workers: list[int], rounds: int) -> list[tuple[BrokerKind, int, int]]:
    """(broker, workers, round) in running order: Shoal worker counts and mosquitto alternate,
    and every other round runs backwards so that neither broker always goes first."""
    shoal = [(BrokerKind.SHOAL, w) for w in workers] if BrokerKind.SHOAL in brokers else []
    mosq = [(BrokerKind.MOSQUITTO, 1)] if BrokerKind.MOSQUITTO in brokers else []
    order = [x for pair in zip_longest(shoal, mosq) for x in pair if x is not None]
    out = []
    for r in range(1, rounds + 1):
        out += [(kind, w, r) for kind, w in (order if r % 2 else order[::-1])]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for n in names():
            print(f"{n:12} {' '.join(load(n).description.split())}")
        return 0
    try:
        chosen = names() if args.scenario == "all" else _csv(args.scenario)
        scenarios: list[Scenario] = [load(n).scaled(args.scale) for n in chosen]
        brokers = [BrokerKind[b.upper()] for b in _csv(args.brokers)]
        workers = [int(w) for w in _csv(args.workers)]
    except (ValueError, KeyError) as e:
        parser.error(str(e))
    if args.rounds < 1 or any(w < 1 for w in workers) or not brokers:
        parser.error("--rounds and --workers must be at least 1, and --brokers must name a broker")
    raise_fd_limit()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    draw = charts.available()
    note = "" if draw else "matplotlib is not installed (`pip install -e '.[bench]'`): no charts."
    sections: list[tuple[Scenario, list[RunResult], dict[str, str]]] = []
    everything: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        for scenario in scenarios:
            runs = []
            for kind, w, r in plan(brokers, workers, args.rounds):
                result = run_once(scenario, kind, w, r, Path(tmp) / f"{scenario.name}-{kind.word}-{w}-{r}")
                runs.append(result)
                everything.append(result.to_json())
                print(f"[{scenario.name}] {report.oneline(result)}", file=sys.stderr, flush=True)
            made = charts.draw(scenario.name, runs, out) if draw else {}
            sections.append((scenario, runs, made))
            (out / "report.md").write_text(report.render(sections, note))
            (out / "results.json").write_text(json.dumps(everything))
    text = report.render(sections, note)
    print(text)
    print(f"\nwritten: {out / 'report.md'}", file=sys.stderr)
    return 1 if any(r.problems for _, runs, _ in sections for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
