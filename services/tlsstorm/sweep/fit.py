"""Receiver CPU per message = a * plain share + b * TLS share, by least squares, with the 95%
intervals of a, b and of a prediction (ordinary least squares on a line in the TLS ratio)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tlsstorm.common.intervals import t95


@dataclass(frozen=True)
class CostFit:
    plain_ms: float  # a: CPU ms per plain message
    tls_ms: float  # b: CPU ms per STARTTLS message
    r_squared: float
    points: int = 0
    mean_ratio: float = 0.0
    sxx: float = 0.0  # sum of squared deviations of the ratios
    residual_sd: float = 0.0  # 0 with two points (a line through both)

    @property
    def factor(self) -> float:
        return self.tls_ms / self.plain_ms if self.plain_ms else float("inf")

    def predict(self, ratio: float) -> float:
        return self.plain_ms * (1 - ratio) + self.tls_ms * ratio

    def half_width(self, ratio: float) -> float:
        """95% half-width of the fitted mean at `ratio` (0 when the fit has no residual
        degrees of freedom: two waves give a line, not its uncertainty)."""
        if self.points <= 2 or not self.sxx:
            return 0.0
        spread = 1 / self.points + (ratio - self.mean_ratio) ** 2 / self.sxx
        return t95(self.points - 2) * self.residual_sd * math.sqrt(spread)

    def as_dict(self) -> dict[str, float]:
        return {"plain_ms": self.plain_ms, "tls_ms": self.tls_ms, "factor": self.factor,
                "r_squared": self.r_squared, "points": self.points,
                "plain_ms_half_width": self.half_width(0.0),
                "tls_ms_half_width": self.half_width(1.0)}


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
    residual_sd = math.sqrt(residual / (count - 2)) if count > 2 else 0.0
    return CostFit(plain_ms=intercept, tls_ms=intercept + slope, r_squared=r_squared,
                   points=count, mean_ratio=mean_x, sxx=sxx, residual_sd=residual_sd)
