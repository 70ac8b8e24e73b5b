"""Held-out validation: fit the model on some waves, predict another (a TLS ratio and a rate it
was not fitted on), then send that wave and compare. The test and the bench both run it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from tlsstorm.plan.model import fits_from_waves, receiver_cores
from tlsstorm.sweep.run import SweepRunner


@dataclass(frozen=True)
class HeldOut:
    ratio: float
    rate: float
    predicted_cores: float
    measured_cores: float
    predicted_p99_ms: float | None
    measured_p99_ms: float | None
    slo_p99_ms: float
    measured_each: tuple[float, ...] = ()  # each held-out wave's cores, the median's inputs

    @property
    def error(self) -> float:
        """Predicted over measured CPU per second, minus one."""
        return self.predicted_cores / self.measured_cores - 1

    @property
    def verdict_right(self) -> bool:
        """The prediction and the measurement agree on whether the p99 objective holds."""
        if self.predicted_p99_ms is None or self.measured_p99_ms is None:
            return False
        return (self.predicted_p99_ms <= self.slo_p99_ms) == \
            (self.measured_p99_ms <= self.slo_p99_ms)

    def text(self) -> str:
        return (f"held out {self.ratio:.0%} STARTTLS at {self.rate:g}/s: receiver CPU "
                f"predicted {self.predicted_cores:.3f} cores, measured {self.measured_cores:.3f} "
                f"({self.error:+.1%}{_each(self.measured_each)}); session p99 predicted "
                f"{_ms(self.predicted_p99_ms)}, "
                f"measured {_ms(self.measured_p99_ms)} against {self.slo_p99_ms:g} ms: verdict "
                f"{'right' if self.verdict_right else 'WRONG'}")


def hold_out(runner: SweepRunner, fitted: list[tuple[float, float, int]],
             held: tuple[float, float, int], slo_p99_ms: float,
             rounds: int = 1) -> tuple[HeldOut, list]:
    """`fitted` and `held`: (TLS ratio, rate, messages) of each wave. With `rounds` > 1 the
    fitted waves and the held-out one are sent in turn that many times, so a drift of the
    machine's speed during the run falls on both sides; the held-out figures are then medians:
    one wave in a few costs the receiver a quarter to a half more than its like (seen most
    in a process's first waves; the machine's speed, probed before and after, had not moved),
    and one such wave must not stand for the held-out one."""
    ratio, rate, messages = held
    points, held_points = [], []
    for _ in range(rounds):
        points += [runner.wave(fit_ratio, fit_rate, fit_messages,
                               f"fit {fit_ratio:.0%} TLS at {fit_rate:g}/s")
                   for fit_ratio, fit_rate, fit_messages in fitted]
        held_points.append(runner.wave(ratio, rate, messages,
                                       f"held out {ratio:.0%} TLS at {rate:g}/s"))
    fit, latency, _ = fits_from_waves([point.as_dict() for point in points])
    predicted = fit.cores(rate, ratio)
    predicted_p99 = latency.predict(predicted, ratio) if latency else None  # one loop
    p99s = [point.session_p99_ms for point in held_points if point.session_p99_ms is not None]
    each = tuple(receiver_cores(point.as_dict()) for point in held_points)
    return HeldOut(ratio, rate, predicted, statistics.median(each), predicted_p99,
                   statistics.median(p99s) if p99s else None, slo_p99_ms, each), points


def _each(cores: tuple[float, ...]) -> str:
    """The held-out waves behind a median, when there are several."""
    return f"; median of {', '.join(f'{value:.3f}' for value in cores)}" if len(cores) > 1 else ""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
