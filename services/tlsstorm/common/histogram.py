"""A bounded latency histogram (log buckets, ~2% precision): percentiles without keeping samples."""

from __future__ import annotations

import math

_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)
_MIN_US = 1.0
_BUCKETS = 1200  # 1 us .. ~20 minutes; anything above lands in the last bucket


class LatencyHistogram:
    """Counts durations in geometric buckets; memory is fixed whatever the sample count."""

    __slots__ = ("count", "counts", "max_ms", "sum_ms")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.sum_ms = 0.0
        self.max_ms = 0.0

    def record(self, value_ms: float) -> None:
        micros = value_ms * 1000.0
        index = 0 if micros <= _MIN_US else int(math.log(micros / _MIN_US) / _LOG_GROWTH) + 1
        index = min(index, _BUCKETS - 1)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.count += 1
        self.sum_ms += value_ms
        if value_ms > self.max_ms:
            self.max_ms = value_ms

    def merge(self, other: LatencyHistogram) -> None:
        for index, hits in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + hits
        self.count += other.count
        self.sum_ms += other.sum_ms
        self.max_ms = max(self.max_ms, other.max_ms)

    def state(self) -> dict:
        """Everything merge() needs, as JSON (one replica's share of a wave to another)."""
        return {"counts": {str(index): hits for index, hits in self.counts.items()},
                "count": self.count, "sum_ms": self.sum_ms, "max_ms": self.max_ms}

    @classmethod
    def from_state(cls, state: dict) -> LatencyHistogram:
        histogram = cls()
        histogram.counts = {int(index): int(hits) for index, hits in state["counts"].items()}
        histogram.count = int(state["count"])
        histogram.sum_ms = float(state["sum_ms"])
        histogram.max_ms = float(state["max_ms"])
        return histogram

    def percentile(self, fraction: float) -> float | None:
        """The value below which `fraction` of samples fall (bucket midpoint, capped at max)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(_bucket_mid_ms(index), self.max_ms)
        return self.max_ms

    def summary(self) -> dict[str, float | int | None]:
        return {
            "count": self.count,
            "p50": _round(self.percentile(0.50)),
            "p95": _round(self.percentile(0.95)),
            "p99": _round(self.percentile(0.99)),
            "max": _round(self.max_ms) if self.count else None,
            "mean": _round(self.sum_ms / self.count) if self.count else None,
        }


def _bucket_mid_ms(index: int) -> float:
    if index == 0:
        return _MIN_US / 1000.0
    low = _MIN_US * _GROWTH ** (index - 1)
    return low * math.sqrt(_GROWTH) / 1000.0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
