"""The bounded latency histogram keeps percentiles within its stated precision."""

from __future__ import annotations

import random

import pytest

from tlsstorm.common.histogram import LatencyHistogram


def test_percentiles_are_within_two_percent_of_exact():
    rng = random.Random(7)
    samples = [rng.lognormvariate(0.5, 0.8) for _ in range(20_000)]
    histogram = LatencyHistogram()
    for sample in samples:
        histogram.record(sample)
    ordered = sorted(samples)

    for fraction in (0.5, 0.95, 0.99):
        exact = ordered[int(fraction * len(ordered)) - 1]
        assert histogram.percentile(fraction) == pytest.approx(exact, rel=0.02)
    assert histogram.max_ms == max(samples)
    assert len(histogram.counts) < 1200


def test_merge_adds_counts_and_empty_has_no_percentiles():
    first, second = LatencyHistogram(), LatencyHistogram()
    first.record(1.0)
    second.record(3.0)
    first.merge(second)

    assert first.count == 2 and first.max_ms == 3.0
    assert LatencyHistogram().summary()["p50"] is None
