"""The per-second line and the summary of a run, as text and as JSON."""
from __future__ import annotations

import json

from loadtest.histogram import LogHistogram
from loadtest.options import Options, Verb
from loadtest.stats import ErrorKind, Second, Totals

PERCENTILES = (50, 90, 99)


def latency_ms(h: LogHistogram) -> dict:
    out = {"count": h.total}
    for p in PERCENTILES:
        out[f"p{p}"] = h.percentile(p) / 1e6
    out["max"] = h.max / 1e6
    out["min"] = h.min / 1e6
    out["mean"] = h.mean() / 1e6
    return out


def rate(count: int, first_ns: int, last_ns: int, elapsed_s: float) -> float:
    """Messages per second over the span from the first to the last one (the whole
    run if there were fewer than two, or all in the same clock reading)."""
    span = (last_ns - first_ns) / 1e9
    if count > 1 and span > 0:
        return count / span
    return count / elapsed_s if elapsed_s > 0 else 0.0


def second_record(s: Second, totals: Totals) -> dict:
    rec = {"t": s.tick, "connected": totals.connected, "subscribed": totals.subscribed, "sent": s.sent,
           "acked": s.acked, "recv": s.received, "errors": s.errors}
    if s.latency.total:
        rec["p50_ms"] = s.latency.percentile(50) / 1e6
        rec["p99_ms"] = s.latency.percentile(99) / 1e6
    return rec


def live_line(rec: dict, opts: Options) -> str:
    if opts.json:
        return json.dumps(rec, separators=(",", ":"))
    parts = [f"{rec['t']:>5}s", f"connected {rec['connected']}"]
    if opts.verb is Verb.SUB:
        parts.append(f"subscribed {rec['subscribed']}")
    if opts.verb is Verb.PUB:
        parts.append(f"sent {rec['sent']}/s")
        if opts.qos:
            parts.append(f"acked {rec['acked']}/s")
    if opts.verb is Verb.SUB:
        parts.append(f"recv {rec['recv']}/s")
    parts.append(f"errors {rec['errors']}")
    if "p50_ms" in rec:
        parts.append(f"latency p50 {rec['p50_ms']:.2f} ms p99 {rec['p99_ms']:.2f} ms")
    return "  ".join(parts)


def settled_line(ready: int, after_s: float, opts: Options) -> str:
    """Printed once, as soon as every client is connected (and subscribed) or failed:
    the signal that a subscriber run is ready for the publishers."""
    if opts.json:
        return json.dumps({"settled_s": round(after_s, 6), "ready": ready, "clients": opts.clients},
                          separators=(",", ":"))
    what = "connected and subscribed" if opts.verb is Verb.SUB else "connected"
    return f"{ready} of {opts.clients} clients {what} after {after_s:.3f} s"


def limit_line(opts: Options, after_s: float) -> str:
    """Printed once, when the run's -L is spent (emqtt-bench prints "publish complete"
    and ends the run); the clients then finish and the summary follows."""
    if opts.json:
        return json.dumps({"limit_reached_s": round(after_s, 6), "limit": opts.limit}, separators=(",", ":"))
    if opts.verb is Verb.PUB:
        return f"publish complete: -L {opts.limit} messages sent after {after_s:.3f} s"
    return f"receive complete: -L {opts.limit} messages received after {after_s:.3f} s"


def summarize(opts: Options, totals: Totals, start_ns: int, elapsed_s: float, settled_s: float | None,
              series: list[dict], crashed: list[str]) -> dict:
    return {
        "verb": opts.verb.word,
        "clients": opts.clients,
        "processes": opts.processes,
        "qos": opts.qos,
        "version": opts.version,
        "payload_size": opts.payload_size if opts.verb is Verb.PUB else None,
        "topic": opts.topic or None,
        "shared": opts.shared,
        "limit": opts.limit,
        "start_ns": start_ns,  # wall clock of the common start; series[i]["t"] counts seconds from here
        "elapsed_s": elapsed_s,
        "settled_s": settled_s,
        "connect_rate": totals.connect_latency.total / settled_s if settled_s else 0.0,
        "connected_max": totals.max_connected,
        "subscribed_max": totals.max_subscribed,
        "sent": totals.sent,
        "acked": totals.acked,
        "received": totals.received,
        "errors": totals.error_count,
        "errors_by_kind": {k.name.lower(): totals.errors[k] for k in ErrorKind if totals.errors[k]},
        "send_rate": rate(totals.sent, totals.first_sent_ns, totals.last_sent_ns, elapsed_s),
        "recv_rate": rate(totals.received, totals.first_recv_ns, totals.last_recv_ns, elapsed_s),
        "first_sent_ns": totals.first_sent_ns,
        "last_sent_ns": totals.last_sent_ns,
        "first_recv_ns": totals.first_recv_ns,
        "last_recv_ns": totals.last_recv_ns,
        "cpu_s": sum(totals.cpu.values()),  # the load processes' CPU time from the start to their end
        "latency_ms": latency_ms(totals.latency),
        "connect_ms": latency_ms(totals.connect_latency),
        "latency_hist": totals.latency.to_json(),
        "series": series,
        "crashed": crashed,
    }


def _percentiles(d: dict) -> str:
    return f"p50 {d['p50']:.2f} ms  p90 {d['p90']:.2f} ms  p99 {d['p99']:.2f} ms  max {d['max']:.2f} ms"


def render_text(s: dict) -> str:
    lines = [f"{s['verb']}: {s['clients']} clients over {s['processes']} processes, {s['elapsed_s']:.2f} s, "
             f"{s['connected_max']} connected at most"]
    if s["settled_s"] is not None:
        lines.append(f"  settled   after {s['settled_s']:.3f} s ({s['connect_rate']:.0f} connects/s)")
    if s["connect_ms"]["count"]:
        lines.append(f"  connect   {_percentiles(s['connect_ms'])}")
    if s["verb"] == "pub":
        acked = f", acked {s['acked']}" if s["qos"] else ""
        lines.append(f"  sent      {s['sent']} ({s['send_rate']:.0f} msg/s){acked}")
    if s["verb"] == "sub":
        lines.append(f"  received  {s['received']} ({s['recv_rate']:.0f} msg/s)")
        if s["latency_ms"]["count"]:
            lines.append(f"  latency   {_percentiles(s['latency_ms'])}")
    msgs = s["sent"] + s["received"]
    per_msg = f" ({s['cpu_s'] / msgs * 1e6:.1f} µs per message)" if msgs else ""
    lines.append(f"  cpu       {s['cpu_s']:.2f} s in the load processes{per_msg}")
    kinds = ", ".join(f"{k} {n}" for k, n in s["errors_by_kind"].items())
    lines.append(f"  errors    {s['errors']}" + (f" ({kinds})" if kinds else ""))
    for detail in s["crashed"]:
        lines.append("  a load process crashed:\n" + detail)
    return "\n".join(lines)
