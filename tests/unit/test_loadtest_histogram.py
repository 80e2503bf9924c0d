"""The latency histogram: bucket arithmetic and percentiles, checked against an
exact nearest-rank computation on the sorted samples."""
from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.histogram import SUB_BITS, LogHistogram, bucket_bounds, bucket_of

EXACT_LIMIT = 1 << (SUB_BITS + 1)  # values below this have a bucket each


def exact_percentile(samples: list[int], p: float) -> int:
    """Nearest rank: the smallest sample with at least p % of the samples at or below it."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def histogram(samples: list[int]) -> LogHistogram:
    h = LogHistogram()
    for v in samples:
        h.record(v)
    return h


def test_buckets_are_contiguous_and_narrow():
    previous_high = -1
    for index in range(40 << SUB_BITS):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1
        assert high >= low
        assert high - low <= low >> SUB_BITS  # width at most 1/128 of the values in it
        assert bucket_of(low) == index and bucket_of(high) == index
        previous_high = high


@given(st.integers(min_value=0, max_value=1 << 62))
@settings(max_examples=300, deadline=None)
def test_every_value_lies_in_its_bucket(value):
    low, high = bucket_bounds(bucket_of(value))
    assert low <= value <= high
    if value < EXACT_LIMIT:
        assert low == high == value


def test_known_samples_1_to_100():
    h = histogram(list(range(1, 101)))
    assert [h.percentile(p) for p in (0, 1, 50, 90, 99, 99.5, 100)] == [1, 1, 50, 90, 99, 100, 100]
    assert (h.total, h.min, h.max, h.sum, h.mean()) == (100, 1, 100, 5050, 50.5)


def test_known_samples_small_and_exact():
    samples = [5, 1, 9, 3, 3, 7, 200, 42, 42, 42]
    h = histogram(samples)
    for p in (10, 20, 30, 50, 60, 70, 80, 90, 95, 100):
        assert h.percentile(p) == exact_percentile(samples, p)


def test_known_large_samples_within_one_bucket():
    # latencies in ns: 1 ms ... 1 s, a long tail
    samples = [1_000_000 * k for k in range(1, 1001)] + [5_000_000_000]
    h = histogram(samples)
    for p in (50, 90, 99, 99.9):
        exact = exact_percentile(samples, p)
        assert exact <= h.percentile(p) <= exact + (exact >> SUB_BITS)
    assert h.percentile(100) == h.max == 5_000_000_000


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=300),
       st.sampled_from([0, 1, 25, 50, 90, 99, 99.9, 100]))
@settings(max_examples=200, deadline=None)
def test_percentile_within_one_bucket_of_exact(samples, p):
    h = histogram(samples)
    exact = exact_percentile(samples, p)
    got = h.percentile(p)
    assert exact <= got <= exact + (exact >> SUB_BITS)
    assert h.min <= got <= h.max


@given(st.lists(st.lists(st.integers(min_value=-5, max_value=10**10), max_size=50), min_size=1, max_size=6))
@settings(max_examples=100, deadline=None)
def test_merging_parts_equals_recording_all(parts):
    merged = LogHistogram()
    for part in parts:
        h = LogHistogram()
        h.record_many(part)
        merged.merge(h)
    whole = histogram([v for part in parts for v in part])
    assert merged.__getstate__() == whole.__getstate__()


def test_negative_values_count_as_zero():
    h = LogHistogram()
    h.record(-3)
    h.record_many([-1, 4])
    assert (h.total, h.min, h.max, h.sum, h.counts) == (3, 0, 4, 4, {0: 2, 4: 1})


def test_empty_histogram():
    h = LogHistogram()
    assert (h.percentile(99), h.mean(), h.total) == (0, 0.0, 0)
    h.merge(LogHistogram())
    assert h.total == 0


def test_percentile_out_of_range():
    with pytest.raises(ValueError):
        histogram([1]).percentile(101)


def test_json_and_pickle_round_trip():
    h = histogram([0, 1, 1000, 123_456_789, 10**11])
    assert LogHistogram.from_json(h.to_json()).__getstate__() == h.__getstate__()
    assert pickle.loads(pickle.dumps(h)).__getstate__() == h.__getstate__()
    broken = h.to_json()
    broken["total"] += 1
    with pytest.raises(ValueError):
        LogHistogram.from_json(broken)
