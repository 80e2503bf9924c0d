"""Live fuzzing: random and mutated MQTT packets sent to a running node over
TCP, TLS and WebSocket for a set time, while a canary moves QoS 1 messages
through the same node.

    python -m tests.fuzz.live --seconds 600            # what `make fuzz` runs (FUZZ_SECONDS)
    python -m tests.fuzz.live --seconds 10 --transports tcp --json /tmp/r.json

The node is started as the README says (`circusd circus.ini`, SHOAL_* settings)
through tests/support/node.py. The report (printed, and written as JSON) gives
what was sent per transport, node crashes (processes that ended: circus
restarted them), canary messages lost and their latency, the RSS of every node
process summed before, after and after a settle period, and the errors the node
logged. The exit status is 0 only when there was no crash, no lost or
unacknowledged canary message, no internal error in the log and memory grew
less than --max-growth-mib.

The node is given a short session expiry cap (SHOAL_MAX_SESSION_EXPIRY,
SHOAL_PERSISTENT_SESSION_EXPIRY) and a retained-message cap, so that the state
fuzz clients legitimately leave behind (persistent sessions with queued
messages, retained messages) ends during the settle period and what remains
of the memory growth is the node's own.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import sys
import threading
import time

from common.settings import Settings
from tests.fuzz.canary import Canary
from tests.fuzz.cases import Generator, build_pool
from tests.fuzz.transports import TlsTransport, Transport, WsTransport
from tests.fuzz.watch import Watch, node_gauges
from tests.support.node import Node, free_port, wait_for

ALL_TRANSPORTS = ("tcp", "tls", "ws")
MAX_PACKET_SIZE = 1 << 20  # the node's SHOAL_MAX_PACKET_SIZE under fuzz (big-partial cases stay under it)


def available_transports() -> list[str]:
    fields = Settings.model_fields
    out = ["tcp"]
    if "tls_port" in fields:
        out.append("tls")
    if "ws_port" in fields:
        out.append("ws")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.live", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 600)),
                    help="how long to fuzz (default: $FUZZ_SECONDS or 600)")
    ap.add_argument("--transports", default=",".join(available_transports()),
                    help="comma-separated: tcp,tls,ws (default: every one this tree has)")
    ap.add_argument("--lanes", type=int, default=16, help="concurrent fuzz connections per transport")
    ap.add_argument("--seed", type=int, default=None, help="seed of every random choice (default: random)")
    ap.add_argument("--workers", type=int, default=2, help="SHOAL_WORKERS of the node")
    ap.add_argument("--pool", type=int, default=300, help="packets drawn from the hypothesis strategies per version")
    ap.add_argument("--read-timeout", type=float, default=1.0, help="seconds a fuzz connection waits for the node")
    ap.add_argument("--case-timeout", type=float, default=10.0, help="most seconds one case may take")
    ap.add_argument("--flood-max", type=int, default=100, help="most connections one flood opens")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds of RSS samples after the fuzz connections closed")
    ap.add_argument("--canary-rate", type=float, default=20.0, help="canary QoS 1 messages per second")
    ap.add_argument("--max-growth-mib", type=float, default=256.0,
                    help="RSS growth (after settling, all node processes) above which the run fails")
    ap.add_argument("--max-slope", type=float, default=2.0,
                    help="MiB/min of RSS growth over the second half of a run of 60 s or more above which it fails"
                         " (the heap grows to a plateau; growth that goes on is a leak)")
    ap.add_argument("--kinds", default="", help="comma-separated case kinds to send (default: all; see tests/fuzz/cases.py)")
    ap.add_argument("--json", dest="json_path", default=None, help="where to write the report (default: /tmp)")
    args = ap.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = set(args.kinds) - {k for k, _ in Generator.KINDS}
    if bad:
        ap.error(f"unknown case kind(s): {', '.join(sorted(bad))}")
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = set(args.transports) - set(ALL_TRANSPORTS)
    if unknown:
        ap.error(f"unknown transport(s): {', '.join(sorted(unknown))}")
    missing = set(args.transports) - set(available_transports())
    if missing:
        ap.error(f"this tree has no {', '.join(sorted(missing))} listener (no SHOAL_TLS_PORT / SHOAL_WS_PORT setting)")
    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    return args


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def node_settings(args, certs) -> dict:
    s = {
        "sys_interval": 0,
        "max_packet_size": MAX_PACKET_SIZE,
        "max_session_expiry": 5,
        "persistent_session_expiry": 5,
        "max_retained_messages": 1000,
    }
    if "tls" in args.transports:
        s.update(tls_port=free_port(), tls_certfile=certs.server_crt, tls_keyfile=certs.server_key)
    if "ws" in args.transports:
        s["ws_port"] = free_port()
    return s


def slope_mib_per_min(samples: list[tuple[float, int]]) -> float | None:
    """Least-squares slope of RSS (KiB) over time, in MiB per minute."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples)
    if den == 0:
        return None
    return round(sum((t - mt) * (v - mv) for t, v in samples) / den * 60 / 1024, 3)


async def fuzz(transports: list[Transport], args, watch: Watch) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.seconds
    pool = args.pool_packets
    flood_lock = asyncio.Lock()

    async def lane(t: Transport, i: int) -> None:
        rng = random.Random(f"{args.seed}-{t.name}-{i}")
        gen = Generator(pool, rng, f"{t.name}{i}", MAX_PACKET_SIZE, args.kinds)
        while loop.time() < deadline:
            case = t.own_case(rng) if rng.random() < 0.25 and not args.kinds else None
            if case is None:
                case = gen.next()
            if case.kind == "flood":  # one flood at a time: the bound on connections is flood_max
                async with flood_lock:
                    await t.run(case, rng, args.case_timeout)
            else:
                await t.run(case, rng, args.case_timeout)

    async def monitor() -> None:
        while loop.time() < deadline:
            watch.poll()
            await asyncio.sleep(1.0)  # allowed: the sampling period of the monitor

    await asyncio.gather(monitor(), *(lane(t, i) for t in transports for i in range(args.lanes)))


def run(args) -> dict:
    raise_fd_limit()
    t_build = time.monotonic()
    args.pool_packets = build_pool(args.pool, args.seed)
    pool_seconds = time.monotonic() - t_build
    certs = None
    if "tls" in args.transports:
        from tests.support.certs import Certs  # the tls-ws helper; only trees with TLS have it
        certs = Certs()
    settings = node_settings(args, certs)
    node = Node(workers=args.workers, **settings)
    node.start(60)
    canaries: list[Canary] = []
    report: dict = {}
    # the run stops by itself even if a part of it hangs: the node is stopped and the process ends
    limit = args.seconds + args.case_timeout + args.settle + 180
    watchdog = threading.Timer(limit, _hard_stop, (node, limit))
    watchdog.daemon = True
    watchdog.start()
    try:
        watch = Watch(node)
        circus_before = watch.circus()
        canaries.append(Canary(node.port, args.canary_rate, name="tcp"))
        if "tls" in args.transports:
            canaries.append(Canary(settings["tls_port"], args.canary_rate, tls_ca=certs.ca, name="tls"))
        if "ws" in args.transports:
            canaries.append(Canary(settings["ws_port"], args.canary_rate, transport="ws", name="ws"))
        for c in canaries:
            c.start()
        for c in canaries:  # the canary runs before the fuzz starts: the baseline includes it
            wait_for(lambda c=c: len(c.received) >= 5, 30, what=f"canary {c.name} flowing")
        fds_before = watch.fds()
        gauges_before = node_gauges(node)
        rss_before = watch.rss()
        watch.poll()

        transports: list[Transport] = []
        for name in args.transports:
            if name == "tcp":
                transports.append(Transport(node.port, args.read_timeout, args.flood_max))
            elif name == "tls":
                transports.append(TlsTransport(settings["tls_port"], args.read_timeout, args.flood_max, certs.ca))
            else:
                transports.append(WsTransport(settings["ws_port"], args.read_timeout, args.flood_max))
        t0 = time.monotonic()
        asyncio.run(fuzz(transports, args, watch))
        fuzz_seconds = time.monotonic() - t0
        watch.poll()
        rss_after = watch.rss()
        fuzz_samples = list(watch.samples)

        # settle: every fuzz connection closed by the node (fds back to where they were), then samples
        try:
            wait_for(lambda: watch.fds() <= fds_before + 4, 60, 0.2, "node closed the fuzz connections")
            fds_settled = True
        except TimeoutError:
            fds_settled = False
        settle_end = time.monotonic() + args.settle
        while True:
            watch.poll()
            if time.monotonic() >= settle_end:
                break
            time.sleep(1.0)  # allowed: the sampling period of the settle phase
        rss_settled = watch.rss()
        gauges_settled = node_gauges(node)

        canary_reports = [c.finish() for c in canaries]
        canaries = []
        watch.poll()
        circus_after = watch.circus()
        errors = watch.log_errors()
        half = [s for s in fuzz_samples if s[0] >= fuzz_samples[-1][0] / 2] if fuzz_samples else []
        growth_kib = rss_settled["total_kib"] - rss_before["total_kib"]
        crashes = len(watch.gone) + sum(1 for w in circus_before if circus_before[w] != circus_after.get(w))
        report = {
            "seed": args.seed,
            "seconds": round(fuzz_seconds, 1),
            "transports": args.transports,
            "lanes_per_transport": args.lanes,
            "node": {"port": node.port, "workers": args.workers,
                     "settings": {f"SHOAL_{k.upper()}": str(v) for k, v in settings.items()},
                     "log": node.log_path},
            "pool": {str(v): len(p) for v, p in args.pool_packets.items()} | {"seconds": round(pool_seconds, 1)},
            "sent": {t.name: t.stats.as_dict() for t in transports},
            "crashes": crashes,
            "processes_ended": watch.gone,
            "circus": {"before": circus_before, "after": circus_after},
            "canary": canary_reports,
            "memory": {
                "before_kib": rss_before["total_kib"], "after_kib": rss_after["total_kib"],
                "after_settle_kib": rss_settled["total_kib"], "growth_after_settle_kib": growth_kib,
                "peak_kib": max((v for _, v in watch.samples), default=0),
                "slope_second_half_mib_per_min": slope_mib_per_min(half),
                "settled_connections": fds_settled, "settle_seconds": args.settle,
                "per_process_before": rss_before["processes_kib"],
                "per_process_after_settle": rss_settled["processes_kib"],
                "samples": watch.samples,
            },
            "node_state": {"before": gauges_before, "after_settle": gauges_settled},
            "node_errors": {"count": len(errors), "lines": errors[:30]},
        }
        failures = []
        if crashes:
            failures.append(f"{crashes} node process(es) ended")
        for c in canary_reports:
            if c["lost"] or c["unacked"]:
                failures.append(f"canary {c['transport']}: {c['lost']} lost, {c['unacked']} unacknowledged")
        if errors:
            failures.append(f"{len(errors)} error line(s) in the node log")
        if growth_kib > args.max_growth_mib * 1024:
            failures.append(f"memory grew {growth_kib / 1024:.1f} MiB (limit {args.max_growth_mib} MiB)")
        slope = report["memory"]["slope_second_half_mib_per_min"]
        if fuzz_seconds >= 60 and slope is not None and slope > args.max_slope:
            failures.append(f"memory still growing {slope} MiB/min in the second half (limit {args.max_slope})")
        report["failures"] = failures
        report["ok"] = not failures
    finally:
        watchdog.cancel()
        for c in canaries:
            try:
                c.finish(0.1)
            except Exception:  # noqa: BLE001 - the report is lost anyway; the node must still stop
                pass
        node.stop()
    return report


def _hard_stop(node: Node, limit: float) -> None:
    print(f"fuzz: not finished after {limit:.0f} s; stopping the node and exiting", file=sys.stderr, flush=True)
    try:
        node.stop()
    finally:
        os._exit(3)


def summary(r: dict) -> str:
    lines = [f"shoal live fuzz: {r['seconds']} s over {', '.join(r['transports'])}, "
             f"{r['lanes_per_transport']} lanes each, seed {r['seed']} (node: {r['node']['workers']} workers)"]
    for name, s in r["sent"].items():
        lines.append(f"  {name:4} {s['connections']:8} connections {s['packets']:9} packets {s['bytes'] / 1e6:8.1f} MB"
                     f"  open failures {s['open_failures']}")
        top = sorted(s["outcomes"].items(), key=lambda kv: -kv[1])[:6]
        lines.append("       outcomes: " + ", ".join(f"{k} {v}" for k, v in top))
    lines.append(f"  node crashes (processes restarted): {r['crashes']}")
    for c in r["canary"]:
        lat = c["latency_ms"]
        lines.append(f"  canary {c['transport']}: published {c['published']} acked {c['acked']} received {c['received']}"
                     f" lost {c['lost']} unacked {c['unacked']} dup {c['duplicates']}"
                     f"  latency ms p50 {lat['p50']} p99 {lat['p99']} max {lat['max']}")
    m = r["memory"]
    lines.append(f"  node RSS (all processes): before {m['before_kib'] / 1024:.1f} MiB, after {m['after_kib'] / 1024:.1f}"
                 f" MiB, after {m['settle_seconds']:.0f} s settle {m['after_settle_kib'] / 1024:.1f} MiB"
                 f" (growth {m['growth_after_settle_kib'] / 1024:+.1f} MiB, peak {m['peak_kib'] / 1024:.1f} MiB,"
                 f" second-half slope {m['slope_second_half_mib_per_min']} MiB/min)")
    lines.append(f"  node error lines: {r['node_errors']['count']}")
    lines.append("  result: " + ("OK" if r["ok"] else "FAILED: " + "; ".join(r["failures"])))
    return "\n".join(lines)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through run()'s finally: the node is stopped


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    path = args.json_path or f"/tmp/shoal-fuzz-{time.strftime('%Y%m%dT%H%M%S')}.json"
    print(f"fuzzing for {args.seconds:.0f} s over {', '.join(args.transports)} (seed {args.seed})", flush=True)
    report = run(args)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(summary(report))
    print(f"report: {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
