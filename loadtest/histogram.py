"""An HDR-style log-bucket histogram of non-negative integers (latencies in ns).

Values below ``2**(SUB_BITS+1)`` get a bucket each; above that every power of two
is cut into ``2**SUB_BITS`` equal buckets, so a bucket is never wider than
``value / 2**SUB_BITS`` (0.8 % with 7 bits).  Buckets are a sparse dict, cheap
to send over a pipe once a second and to merge in the parent; percentiles come
from the merged buckets, never from a list of every sample.
"""
from __future__ import annotations

import math

SUB_BITS = 7
_SUB = 1 << SUB_BITS
_EXACT_BITS = SUB_BITS + 1  # values with at most this many bits are exact


def bucket_of(value: int) -> int:
    shift = value.bit_length() - _EXACT_BITS
    if shift <= 0:
        return value
    return (shift << SUB_BITS) + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """Lowest and highest value that fall in bucket ``index``."""
    if index < 2 * _SUB:
        return index, index
    shift = (index >> SUB_BITS) - 1
    mantissa = index - (shift << SUB_BITS)
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class LogHistogram:
    __slots__ = ("counts", "total", "min", "max", "sum")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.min = 0
        self.max = 0
        self.sum = 0

    def record(self, value: int) -> None:
        if value < 0:
            value = 0
        shift = value.bit_length() - _EXACT_BITS
        index = value if shift <= 0 else (shift << SUB_BITS) + (value >> shift)
        counts = self.counts
        counts[index] = counts.get(index, 0) + 1
        if self.total == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.total += 1
        self.sum += value

    def record_many(self, values: list[int]) -> None:
        """``record`` each of ``values`` (faster: min, max and sum run once, in C)."""
        if not values:
            return
        low = min(values)
        if low < 0:
            values = [v if v > 0 else 0 for v in values]
            low = 0
        counts = self.counts
        get = counts.get
        for value in values:
            shift = value.bit_length() - _EXACT_BITS
            index = value if shift <= 0 else (shift << SUB_BITS) + (value >> shift)
            counts[index] = get(index, 0) + 1
        high = max(values)
        if self.total == 0 or low < self.min:
            self.min = low
        if high > self.max:
            self.max = high
        self.total += len(values)
        self.sum += sum(values)

    def merge(self, other: LogHistogram) -> None:
        if not other.total:
            return
        counts = self.counts
        for index, n in other.counts.items():
            counts[index] = counts.get(index, 0) + n
        self.min = other.min if self.total == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.total += other.total
        self.sum += other.sum

    def percentile(self, p: float) -> int:
        """The value at percentile ``p`` (0-100), nearest rank: the smallest recorded
        value with at least ``p`` % of the samples at or below it, to within one bucket
        (the bucket's highest value, clamped to the recorded min and max)."""
        if not self.total:
            return 0
        if not 0 <= p <= 100:
            raise ValueError(f"percentile out of range: {p}")
        rank = max(1, math.ceil(p / 100 * self.total))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return max(self.min, min(self.max, bucket_bounds(index)[1]))
        return self.max  # unreachable while counts add up to total

    def distribution(self) -> list[tuple[int, float]]:
        """``(highest value of the bucket, fraction of samples at or below it)`` for
        each bucket holding samples, lowest first: the data of a percentile plot."""
        out = []
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            out.append((max(self.min, min(self.max, bucket_bounds(index)[1])), seen / self.total))
        return out

    def mean(self) -> float:
        return self.sum / self.total if self.total else 0.0

    def to_json(self) -> dict:
        return {"sub_bits": SUB_BITS, "total": self.total, "min": self.min, "max": self.max, "sum": self.sum,
                "counts": [[i, n] for i, n in sorted(self.counts.items())]}

    @classmethod
    def from_json(cls, data: dict) -> LogHistogram:
        if data["sub_bits"] != SUB_BITS:
            raise ValueError(f"histogram with {data['sub_bits']} sub-bucket bits, expected {SUB_BITS}")
        h = cls()
        h.counts = {int(i): int(n) for i, n in data["counts"]}
        h.total, h.min, h.max, h.sum = data["total"], data["min"], data["max"], data["sum"]
        if sum(h.counts.values()) != h.total:
            raise ValueError("histogram counts do not add up to its total")
        return h

    def __getstate__(self):
        return (self.counts, self.total, self.min, self.max, self.sum)

    def __setstate__(self, state) -> None:
        self.counts, self.total, self.min, self.max, self.sum = state
