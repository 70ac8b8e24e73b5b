"""Receiver CPU per message = a * plain share + b * TLS share, by least squares."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostFit:
    plain_ms: float  # a: CPU ms per plain message
    tls_ms: float  # b: CPU ms per STARTTLS message
    r_squared: float

    @property
    def factor(self) -> float:
        return self.tls_ms / self.plain_ms if self.plain_ms else float("inf")

    def predict(self, ratio: float) -> float:
        return self.plain_ms * (1 - ratio) + self.tls_ms * ratio

    def as_dict(self) -> dict[str, float]:
        return {"plain_ms": self.plain_ms, "tls_ms": self.tls_ms, "factor": self.factor,
                "r_squared": self.r_squared}


def fit_cost(points: list[tuple[float, float]]) -> CostFit:
    """Fit (TLS ratio, CPU ms per message) points; y = a + (b - a) * ratio is a line in ratio."""
    if len({ratio for ratio, _ in points}) < 2:
        raise ValueError("a fit needs waves at two or more different TLS ratios")
    count = len(points)
    mean_x = sum(x for x, _ in points) / count
    mean_y = sum(y for _, y in points) / count
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for _, y in points)
    residual = sum((y - (intercept + slope * x)) ** 2 for x, y in points)
    r_squared = 1.0 - residual / total if total else 1.0
    return CostFit(plain_ms=intercept, tls_ms=intercept + slope, r_squared=r_squared)
