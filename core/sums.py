"""Figures shared by every process of a node: a fixed-bucket histogram and the node-wide sums."""
from __future__ import annotations

from bisect import bisect_left


# seconds from a CONNECT to its grant, when it took a session over (see Broker.claimed)
TAKEOVER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Fixed buckets; counts[i] counts values <= bounds[i] (not cumulative), the
    last one those above every bound."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds=TAKEOVER_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def as_wire(self) -> list:
        return [list(self.bounds), list(self.counts), self.sum]


def node_sums(snapshots) -> dict:
    """Node-wide figures from per-worker snapshots: counters add up, uptime is the
    longest. (Retained messages are one node-wide set: the caller sets that count.)"""
    sums: dict = {}
    for snap in snapshots:
        for k, v in snap.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                sums[k] = max(sums.get(k, 0), v) if k == "uptime" else sums.get(k, 0) + v
    return sums
