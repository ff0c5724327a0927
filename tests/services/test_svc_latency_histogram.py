"""The compiled latency histogram the services' request metrics and the load generator record into."""

from __future__ import annotations

import pytest

from tradeplane_services._wire import LatencyHistogram


def test_cumulative_counts_are_prometheus_le_buckets_with_an_exact_sum() -> None:
    histogram = LatencyHistogram()
    histogram.record(1000, 3)
    for value in (1500, 4000, 10_000):
        histogram.record(value)
    assert histogram.cumulative_counts([1000, 2000, 5000]) == [3, 4, 5]
    assert (histogram.count, histogram.sum_ns) == (6, 3 * 1000 + 1500 + 4000 + 10_000)


def test_a_latency_never_counts_below_a_bound_it_exceeds() -> None:
    histogram = LatencyHistogram()
    histogram.record(3001)  # 3 significant digits: recorded in 3000..3001, so it may not count as <= 3000
    assert histogram.cumulative_counts([3000, 3002]) == [0, 1]


def test_percentiles_and_maximum_within_three_digits() -> None:
    histogram = LatencyHistogram()
    histogram.record_all(list(range(1, 100_001)))
    percentiles = dict(histogram.percentiles_us([50.0, 99.9]))
    assert percentiles["p50"] == pytest.approx(50.0, rel=1e-3)
    assert percentiles["p99.9"] == pytest.approx(99.9, rel=1e-3)
    assert histogram.max_ns == pytest.approx(100_000, rel=1e-3)


def test_latencies_beyond_the_range_count_at_its_top_and_in_the_sum() -> None:
    histogram = LatencyHistogram(10**6)
    histogram.record(5 * 10**9)
    assert histogram.count == 1 and histogram.max_ns == pytest.approx(10**6, rel=1e-3)
    assert histogram.sum_ns == 5 * 10**9


def test_bounds_must_ascend_and_a_negative_latency_is_refused() -> None:
    histogram = LatencyHistogram()
    with pytest.raises(ValueError, match="bounds_ns must be strictly ascending"):
        histogram.cumulative_counts([2000, 1000])
    with pytest.raises(OverflowError):
        histogram.record(-1)
