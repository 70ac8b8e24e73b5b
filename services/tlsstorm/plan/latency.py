"""Session p99 against load, fitted to measured waves, one curve per mode:
p99 = fixed + queue / (1 - load), where load is the share of the server's cores busy. The fixed
part is what no load removes (round trips, a server's own pauses: Exim holds its answer to QUIT
200 ms, a client's delayed ACKs), the queueing part is the M/M/1 shape's. A mix's p99 is its
slowest mode's: a p99 is not linear in the TLS ratio (one mode's tail sets it as soon as that
mode is more than a percent of the sessions), so a pooled curve is wrong for every server whose
two modes differ in their tails. Past MAX_LOAD no p99 is predicted: that near saturation, the
measured tail grows faster than any curve fitted below it, and the planner says so instead.

A p99 comes with its range, for the verdict against an objective: the curve's at the load the
CPU fit's own error allows (the server's speed moves between waves: the same wave of a sweep
kept Postfix 26% busy, then 31%), times the spread of the fitted waves around their curve. Near
the knee both grow fast; a range that holds the objective gives no verdict."""

from __future__ import annotations

from dataclasses import dataclass

MAX_LOAD = 0.95  # no prediction closer to saturation than this
_USABLE = 0.97  # waves this close to saturation say nothing about the curve
_SHARE = 0.01  # a mode with at least this share of the sessions sets the p99 as much as any
MODES = ("plain", "tls")

# (load, TLS ratio, measured p99 ms of the plain sessions, of the STARTTLS ones, of all)
Point = tuple[float, float, float | None, float | None, float | None]


@dataclass(frozen=True)
class ModeCurve:
    fixed_ms: float
    queue_ms: float

    def predict(self, load: float) -> float:
        return self.fixed_ms + self.queue_ms / (1 - load)


@dataclass(frozen=True)
class LatencyCurve:
    curves: dict[str, ModeCurve]  # per mode, for the modes the waves measured
    points: list[Point]
    # The busiest load of the waves the curves were fitted on: past it, the p99 extrapolates
    # (waves closer to saturation than _USABLE are in `points`, not in the fit).
    fitted_up_to: float
    spread: tuple[float, float] = (1.0, 1.0)  # the fitted waves' p99 over their curve's, at most
    load_error: float = 0.0  # the CPU fit's largest relative error over the same waves

    def predict(self, load: float, ratio: float) -> float | None:
        """The p99 at that load and TLS ratio; None at or past MAX_LOAD, or for a mix with a
        mode no wave measured."""
        if load >= MAX_LOAD:
            return None
        present = [mode for mode, share in (("plain", 1 - ratio), ("tls", ratio))
                   if share >= _SHARE]
        if any(mode not in self.curves for mode in present):
            return None
        return max(self.curves[mode].predict(load) for mode in present)

    def predict_range(self, load: float, ratio: float) -> tuple[float, float | None] | None:
        """The p99's lowest and highest within the CPU fit's error and the curves' spread; the
        highest None (unbounded) where that error reaches MAX_LOAD or goes more than a tenth
        past the loads fitted (Exim's p99, flat to 43%, was half as much again at 85%). The
        lowest holds anywhere: a p99 does not fall as load grows."""
        if self.predict(load, ratio) is None:
            return None
        low = self.predict(load * (1 - self.load_error), ratio)
        busiest = load * (1 + self.load_error)
        high = self.predict(busiest, ratio) if busiest <= self.fitted_up_to + 0.1 else None
        return (low * min(self.spread[0], 1.0),
                None if high is None else high * max(self.spread[1], 1.0))

    def as_dict(self) -> dict[str, object]:
        return {"model": "p99 = max over modes present (fixed + queue / (1 - load)); none "
                         f"past {MAX_LOAD:.0%} load",
                "fitted_up_to_load": round(self.fitted_up_to, 4),
                "spread": [round(value, 3) for value in self.spread],
                "load_error": round(self.load_error, 4),
                "modes": {mode: {"fixed_ms": round(curve.fixed_ms, 3),
                                 "queue_ms": round(curve.queue_ms, 3)}
                          for mode, curve in self.curves.items()},
                "points": [{"load": round(load, 4), "tls_ratio": ratio, "p99_ms": p99,
                            "predicted_ms": _round(self.predict(load, ratio))}
                           for load, ratio, _, _, p99 in self.points]}


def p99_verdict(bounds: tuple[float, float | None] | None, objective_ms: float) -> bool | None:
    """Whether a p99 with these bounds (LatencyCurve.predict_range's) meets the objective;
    None when the range holds the objective, or no p99 is predicted."""
    if bounds is None:
        return None
    low, high = bounds
    if high is not None and high <= objective_ms:
        return True
    return False if low > objective_ms else None


def fit_latency(points: list[Point]) -> LatencyCurve | None:
    """From each wave's (load, TLS ratio, plain p99, STARTTLS p99, p99 of all): a curve for
    each mode with a usable wave (waves at one load: their mean p99 as a constant); None when
    no mode has one. Where a wave gives only the p99 of all (sweeps before per-mode figures
    were kept), that stands for each mode it carried."""
    curves, fitted = {}, []
    for index, mode in enumerate(MODES):
        usable = []
        for load, ratio, plain, tls, overall in points:
            share = ratio if mode == "tls" else 1 - ratio
            value = (plain, tls)[index]
            if value is None and plain is None and tls is None:
                value = overall
            if 0 <= load < _USABLE and share >= _SHARE and value:
                usable.append((load, value))
        if len({round(load, 3) for load, _ in usable}) >= 2:
            curves[mode] = _fit_mode(usable)
        elif usable:
            curves[mode] = ModeCurve(sum(p99 for _, p99 in usable) / len(usable), 0.0)
        # Every curve is above zero: the p99s it is fitted on are, and neither part is below.
        fitted += [(load, p99 / curves[mode].predict(load)) for load, p99 in usable]
    if not curves:
        return None
    over = [measured_over_curve for _, measured_over_curve in fitted]
    return LatencyCurve(curves, sorted(points, key=lambda point: point[:2]),
                        max(load for load, _ in fitted), (min(over), max(over)))


def _fit_mode(points: list[tuple[float, float]]) -> ModeCurve:
    """Least squares of p99 = fixed + queue x 1/(1 - load), both parts at least zero."""
    xs = [1 / (1 - load) for load, _ in points]
    ys = [p99 for _, p99 in points]
    count = len(xs)
    mean_x, mean_y = sum(xs) / count, sum(ys) / count
    sxx = sum((x - mean_x) ** 2 for x in xs)
    queue = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx \
        if sxx > 0 else 0.0
    fixed = mean_y - queue * mean_x
    if queue < 0:  # the tail shrank with load: noise around a constant
        return ModeCurve(mean_y, 0.0)
    if fixed < 0:  # all of it queueing: through the origin
        return ModeCurve(0.0, sum(x * y for x, y in zip(xs, ys, strict=True))
                         / sum(x * x for x in xs))
    return ModeCurve(fixed, queue)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
