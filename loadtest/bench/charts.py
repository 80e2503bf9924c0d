"""PNG charts of a scenario's runs (matplotlib, an optional dependency: ``pip install -e '.[bench]'``)."""
from __future__ import annotations

from pathlib import Path

from loadtest.bench.session import RunResult
from loadtest.options import Verb


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _series(r: RunResult, verb: Verb, key: str) -> tuple[list[float], list[float]]:
    """Per-second ``key`` summed over the groups of ``verb``, on seconds since the load started."""
    sums: dict[float, float] = {}
    for s in r.summaries(verb):
        for rec in s["series"]:
            # record t covers the second [t-1, t) of its group's run: plot it from its start
            t = round((s["start_ns"] - r.load_start_ns) / 1e9 + rec["t"] - 1, 1)
            sums[t] = sums.get(t, 0) + rec[key]
    xs = sorted(sums)
    return xs, [sums[x] for x in xs]


def draw(name: str, runs: list[RunResult], out: Path) -> dict[str, str]:
    """Write ``<name>-throughput.png`` and ``<name>-latency.png`` into ``out``; returns title -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in runs if r.groups]
    if not runs:
        return {}
    charts = {}
    conn_only = all(g.group.verb is Verb.CONN for g in runs[0].groups)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, height_ratios=(2, 1))
    for r in runs:
        label = f"{r.label} #{r.round}"
        xs, ys = _series(r, Verb.CONN, "connected") if conn_only else _series(r, Verb.SUB, "recv")
        top.plot(xs, ys, label=label, drawstyle="steps-post")
        if r.cpu_series:
            bottom.plot([t for t, _ in r.cpu_series], [c for _, c in r.cpu_series], label=label)
    top.set_ylabel("connected clients" if conn_only else "delivered msgs/s")
    top.set_title(f"{name}: {'connections' if conn_only else 'throughput'} over time")
    top.grid(alpha=0.3)
    top.legend()
    bottom.set_ylabel("broker CPU %")
    bottom.set_xlabel("seconds since the load started")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path = out / f"{name}-throughput.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    charts["connections over time" if conn_only else "throughput over time"] = path.name

    fig, ax = plt.subplots(figsize=(10, 5))
    drawn = False
    for r in runs:
        h = r.latency()
        if not h.total:
            continue
        points = [(v / 1e6, 1 / (1 - f)) for v, f in h.distribution() if f < 1]
        if h.max:
            points.append((h.max / 1e6, 1e6))  # the maximum, drawn past the last finite percentile
        ax.step([x for _, x in points], [v for v, _ in points], where="post", label=f"{r.label} #{r.round}")
        drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [1, 2, 10, 100, 1000, 10000, 100000]
        ax.set_xticks(ticks, ["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
        ax.set_xlim(1, 1e6)
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency ms")
        ax.set_title(f"{name}: latency distribution")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        path = out / f"{name}-latency.png"
        fig.savefig(path, dpi=100)
        charts["latency distribution"] = path.name
    plt.close(fig)
    return charts
