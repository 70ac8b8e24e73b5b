"""Load shapes for spam waves, pickable in the web UI; each reads its knobs from the options."""

from __future__ import annotations

import math

from locust import LoadTestShape
from options import set_wave_options

RUSTOCK_TLS_RATIOS = (0.2, 0.3, 0.7)


class _Shape(LoadTestShape):
    abstract = True
    # Users, spawn rate and run time come from the web UI's usual fields.
    use_common_options = True

    @property
    def options(self):
        return self.runner.environment.parsed_options

    def _run_time_over(self) -> bool:
        limit = self.options.run_time
        return bool(limit) and self.get_run_time() >= limit


class ConstantLoad(_Shape):
    """Users and spawn rate as set in the UI, until the run time (if any) is over."""

    def tick(self):
        if self._run_time_over():
            return None
        return self.options.num_users, self.options.spawn_rate


class SpamWaves(_Shape):
    """Bursts: the UI's users for --wave-burst seconds in every --wave-period, none between."""

    def tick(self):
        if self._run_time_over():
            return None
        into_period = self.get_run_time() % max(self.options.wave_period, 1.0)
        users = self.options.num_users if into_period < self.options.wave_burst else 0
        return users, self.options.spawn_rate


class RustockTimeline(_Shape):
    """Rustock's shift to TLS: successive waves at 20%, 30%, then 70% STARTTLS, then stop.

    Each phase lasts --phase-seconds; its ratio (and a wave label per phase, when a wave id is
    set) reaches running users, on workers too.
    """

    def __init__(self) -> None:
        super().__init__()
        self.phase = -1
        self.base_wave_id: str | None = None

    def tick(self):
        phase = math.floor(self.get_run_time() / max(self.options.phase_seconds, 1.0))
        if phase >= len(RUSTOCK_TLS_RATIOS):
            return None
        if phase != self.phase:
            self.phase = phase
            self._enter(phase)
        return self.options.num_users, self.options.spawn_rate

    def _enter(self, phase: int) -> None:
        ratio = RUSTOCK_TLS_RATIOS[phase]
        if self.base_wave_id is None:
            self.base_wave_id = self.options.wave_id
        changes: dict[str, object] = {"tls_ratio": ratio}
        if self.base_wave_id:
            changes["wave_id"] = f"{self.base_wave_id}-phase{phase + 1}-tls{round(ratio * 100)}"
        set_wave_options(self.runner.environment, **changes)


SHAPES = {"constant": ConstantLoad, "waves": SpamWaves, "rustock": RustockTimeline}


def ordered_shapes(default: str) -> dict[str, type[LoadTestShape]]:
    """Shape classes by name with `default` first: Locust uses the first one it finds."""
    if default not in SHAPES:
        raise SystemExit(f"TLSSTORM_LOAD_SHAPE={default!r}: use one of {', '.join(SHAPES)}")
    ordered = {SHAPES[default].__name__: SHAPES[default]}
    ordered.update({shape.__name__: shape for shape in SHAPES.values()})
    return ordered
