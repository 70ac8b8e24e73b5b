"""Session p99 against load, fitted to measured waves: p99 = (base + tls x ratio) / (1 - load),
the M/M/1 shape (load: the share of the receiver's one core busy), its two parameters by least
squares. The measured points are kept to show beside the curve."""

from __future__ import annotations

from dataclasses import dataclass

_USABLE = 0.97  # waves this close to saturation say nothing about the curve's base


@dataclass(frozen=True)
class LatencyCurve:
    base_ms: float  # all-plain p99 with no queue
    tls_ms: float  # what an all-STARTTLS mix adds to it
    points: list[tuple[float, float, float]]  # (load, TLS ratio, measured p99 ms)

    def predict(self, load: float, ratio: float) -> float | None:
        """The p99 at that load and TLS ratio; None at or past saturation."""
        if load >= 1:
            return None
        return (self.base_ms + self.tls_ms * ratio) / (1 - load)

    def as_dict(self) -> dict[str, object]:
        return {"model": "p99 = (base + tls x ratio) / (1 - load)",
                "base_ms": round(self.base_ms, 3), "tls_ms": round(self.tls_ms, 3),
                "points": [{"load": round(load, 4), "tls_ratio": ratio, "p99_ms": p99,
                            "predicted_ms": _round(self.predict(load, ratio))}
                           for load, ratio, p99 in self.points]}


def fit_latency(points: list[tuple[float, float, float]]) -> LatencyCurve | None:
    """From (load, TLS ratio, p99 ms) points; None without two usable ones."""
    usable = [(load, ratio, p99) for load, ratio, p99 in points if 0 <= load < _USABLE and p99]
    if len(usable) < 2:
        return None
    rows = [(1 / (1 - load), ratio / (1 - load)) for load, ratio, _ in usable]
    ys = [p99 for _, _, p99 in usable]
    saa = sum(a * a for a, _ in rows)
    sab = sum(a * b for a, b in rows)
    sbb = sum(b * b for _, b in rows)
    say = sum(a * y for (a, _), y in zip(rows, ys, strict=True))
    sby = sum(b * y for (_, b), y in zip(rows, ys, strict=True))
    det = saa * sbb - sab * sab
    if abs(det) < 1e-12:  # one TLS ratio only: no split between plain and TLS
        return LatencyCurve(say / saa, 0.0, sorted(points))
    return LatencyCurve((say * sbb - sby * sab) / det, (sby * saa - say * sab) / det,
                        sorted(points))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
