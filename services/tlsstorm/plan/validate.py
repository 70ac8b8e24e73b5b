"""Held-out validation: fit the model on some waves, predict another (a TLS ratio and a rate it
was not fitted on), then send that wave and compare. The test and the bench both run it."""

from __future__ import annotations

from dataclasses import dataclass

from tlsstorm.plan.fit import fit_scaling
from tlsstorm.plan.latency import fit_latency
from tlsstorm.sweep.run import SweepRunner, WavePoint


@dataclass(frozen=True)
class HeldOut:
    ratio: float
    rate: float
    predicted_cores: float
    measured_cores: float
    predicted_p99_ms: float | None
    measured_p99_ms: float | None
    slo_p99_ms: float

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
                f"({self.error:+.1%}); session p99 predicted {_ms(self.predicted_p99_ms)}, "
                f"measured {_ms(self.measured_p99_ms)} against {self.slo_p99_ms:g} ms: verdict "
                f"{'right' if self.verdict_right else 'WRONG'}")


def cores(point: WavePoint) -> float:
    return point.achieved_rate * point.process_cpu_ms_per_message / 1000


def hold_out(runner: SweepRunner, fitted: list[tuple[float, float, int]],
             held: tuple[float, float, int], slo_p99_ms: float) -> tuple[HeldOut, list]:
    """`fitted` and `held`: (TLS ratio, rate, messages) of each wave."""
    points = [runner.wave(ratio, rate, messages, f"fit {ratio:.0%} TLS at {rate:g}/s")
              for ratio, rate, messages in fitted]
    fit = fit_scaling([(p.tls_ratio, p.achieved_rate, cores(p)) for p in points])
    latency = fit_latency([(cores(p), p.tls_ratio, p.session_p99_ms) for p in points
                           if p.session_p99_ms])
    ratio, rate, messages = held
    predicted = fit.cores(rate, ratio)
    predicted_p99 = latency.predict(predicted, ratio) if latency else None
    point = runner.wave(ratio, rate, messages, f"held out {ratio:.0%} TLS at {rate:g}/s")
    return HeldOut(ratio, rate, predicted, cores(point), predicted_p99, point.session_p99_ms,
                   slo_p99_ms), points


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
