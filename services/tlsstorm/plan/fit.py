"""The fits the planner and the sweep share.

A server's CPU as it scales: cores busy = idle + rate x (a x plain share + b x TLS share),
fitted by least squares over waves at several TLS ratios and rates. Per-message costs measured
at one low rate would carry the idle loop's share of each second; this separates the two, with
95% intervals from the fit's covariance (t with n - 3 degrees of freedom). And the sweep's
simpler line: CPU per message against the TLS ratio, at one rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tlsstorm.common.intervals import t95


@dataclass(frozen=True)
class ScalingFit:
    idle_cores: float  # what the process spends per second with no mail
    plain_ms: float  # CPU ms per plain message, at the margin
    tls_ms: float  # CPU ms per STARTTLS message, at the margin
    covariance: tuple[tuple[float, ...], ...]  # of (idle, plain, tls), in cores and ms / 1000
    points: int
    r_squared: float
    # False when every wave ran at one rate: the idle share is then inside the costs (0 here).
    idle_separated: bool = True

    def cost_ms(self, ratio: float) -> float:
        return self.plain_ms * (1 - ratio) + self.tls_ms * ratio

    def cost_half_width_ms(self, ratio: float) -> float:
        weights = (0.0, 1 - ratio, ratio)
        variance = sum(weights[i] * weights[j] * self.covariance[i][j]
                       for i in range(3) for j in range(3))
        if self.points <= 3 or variance <= 0:
            return 0.0
        return t95(self.points - 3) * math.sqrt(variance) * 1000

    def cores(self, rate: float, ratio: float) -> float:
        return self.idle_cores + rate * self.cost_ms(ratio) / 1000

    def as_dict(self) -> dict[str, float]:
        return {"model": "cores = idle + rate x (plain x (1 - ratio) + TLS x ratio)",
                "idle_cores": round(self.idle_cores, 4),
                "plain_ms": round(self.plain_ms, 4), "tls_ms": round(self.tls_ms, 4),
                "plain_ms_half_width": round(self.cost_half_width_ms(0.0), 4),
                "tls_ms_half_width": round(self.cost_half_width_ms(1.0), 4),
                "factor": round(self.tls_ms / self.plain_ms, 3) if self.plain_ms else None,
                "r_squared": round(self.r_squared, 4), "points": self.points,
                "idle_separated": self.idle_separated}


def fit_scaling(waves: list[tuple[float, float, float]]) -> ScalingFit:
    """From (TLS ratio, messages per second, cores busy) of each wave."""
    if len({round(ratio, 6) for ratio, _, _ in waves}) < 2:
        raise ValueError("the fit needs waves at two or more TLS ratios")
    if len(waves) < 3:
        raise ValueError("the fit needs three or more waves")
    rates = [rate for _, rate, _ in waves]
    # Rates within a fifth of each other cannot tell the idle share from the cost per message.
    separated = max(rates) > 1.2 * min(rates)
    rows = [(1.0 if separated else 0.0, rate * (1 - ratio), rate * ratio)
            for ratio, rate, _ in waves]
    ys = [cores for _, _, cores in waves]
    normal = [[sum(row[i] * row[j] for row in rows) for j in range(3)] for i in range(3)]
    if not separated:
        normal[0][0] = 1.0  # the idle share, pinned at 0 (no data on it)
    inverse = _inverse3(normal)
    moments = [sum(row[i] * y for row, y in zip(rows, ys, strict=True)) for i in range(3)]
    idle, plain, tls = (sum(inverse[i][j] * moments[j] for j in range(3)) for i in range(3))
    predicted = [idle * a + plain * b + tls * c for a, b, c in rows]
    residual = sum((y - p) ** 2 for y, p in zip(ys, predicted, strict=True))
    mean_y = sum(ys) / len(ys)
    total = sum((y - mean_y) ** 2 for y in ys)
    parameters = 3 if separated else 2
    variance = residual / (len(ys) - parameters) if len(ys) > parameters else 0.0
    covariance = tuple(tuple(variance * value for value in line) for line in inverse)
    return ScalingFit(idle, plain * 1000, tls * 1000, covariance, len(ys),
                      1 - residual / total if total else 1.0, separated)


def _inverse3(m: list[list[float]]) -> list[list[float]]:
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    if abs(det) < 1e-12:
        raise ValueError("the waves do not separate plain from TLS costs (vary the TLS ratio)")
    return [[(e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det],
            [(f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det],
            [(d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det]]


@dataclass(frozen=True)
class CostFit:
    """CPU per message = a x plain share + b x TLS share, at one rate (a sweep's waves)."""

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
