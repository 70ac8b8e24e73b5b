"""Load shapes for spam waves, pickable in the web UI; each reads its knobs from the options."""

from __future__ import annotations

import math

from locust import LoadTestShape
from locust.env import Environment
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


class _LabelledStages(_Shape):
    """A shape whose stages each get a wave label of their own (`<wave id>-<stage>`).

    The web UI keeps one shape instance for every run: Locust calls reset_time() as a run
    starts, so the stage is forgotten then, and the wave id is read again whenever it is not
    the label this shape set last (the user typed a new one, or this is the first run).
    """

    abstract = True

    def __init__(self) -> None:
        super().__init__()
        self.stage: int | None = None
        self._base_wave_id = ""
        self._last_label: str | None = None

    def reset_time(self) -> None:
        super().reset_time()
        self.stage = None

    def enter(self, stage: int, label: str, **changes: object) -> None:
        """Apply a stage's option changes (here and on every worker) once, as it begins."""
        if stage == self.stage:
            return
        self.stage = stage
        if self.options.wave_id != self._last_label:
            self._base_wave_id = self.options.wave_id
        if self._base_wave_id:
            self._last_label = changes["wave_id"] = f"{self._base_wave_id}-{label}"
        if changes:
            set_wave_options(self.runner.environment, **changes)


class SpamWaves(_LabelledStages):
    """Bursts: the UI's users for --wave-burst seconds in every --wave-period, none between.

    With a wave id set, each burst is labelled `<wave id>-burst<N>`.
    """

    def tick(self):
        if self._run_time_over():
            return None
        period = max(self.options.wave_period, 1.0)
        burst, into_period = divmod(self.get_run_time(), period)
        self.enter(int(burst), f"burst{int(burst) + 1}")
        users = self.options.num_users if into_period < self.options.wave_burst else 0
        return users, self.options.spawn_rate


class RustockTimeline(_LabelledStages):
    """Rustock's shift to TLS: successive waves at 20%, 30%, then 70% STARTTLS, then stop.

    Each phase lasts --phase-seconds; its ratio (and a wave label per phase,
    `<wave id>-phase<N>-tls<percent>`, when a wave id is set) reaches running users, on
    workers too.
    """

    def tick(self):
        phase = math.floor(self.get_run_time() / max(self.options.phase_seconds, 1.0))
        if phase >= len(RUSTOCK_TLS_RATIOS):
            return None
        ratio = RUSTOCK_TLS_RATIOS[phase]
        self.enter(phase, f"phase{phase + 1}-tls{round(ratio * 100)}", tls_ratio=ratio)
        return self.options.num_users, self.options.spawn_rate


SHAPES = {"constant": ConstantLoad, "waves": SpamWaves, "rustock": RustockTimeline}


def ordered_shapes(default: str) -> dict[str, type[LoadTestShape]]:
    """Shape classes by name with `default` first: Locust uses the first one it finds."""
    if default not in SHAPES:
        raise SystemExit(f"TLSSTORM_LOAD_SHAPE={default!r}: use one of {', '.join(SHAPES)}")
    ordered = {SHAPES[default].__name__: SHAPES[default]}
    ordered.update({shape.__name__: shape for shape in SHAPES.values()})
    return ordered


def preselect_in_web_ui(environment: Environment, default: str) -> None:
    """Show `default` first in the web UI's Shape Class list, so Start runs it.

    With --class-picker, Locust's UI lists "Default" (no shape) first and selects the first
    entry; it has no setting for another, so the page's arguments are reordered each time it
    is built. Every choice here (Default too) uses the common options, which the page is told,
    so picking any of them keeps the users and spawn-rate fields.
    """
    web_ui = environment.web_ui
    if web_ui is None or not web_ui.userclass_picker_is_active:
        return
    name = SHAPES[default].__name__
    build_page_arguments = web_ui.update_template_args

    def with_default_first() -> None:
        build_page_arguments()
        names = web_ui.template_args["available_shape_classes"]
        web_ui.template_args["available_shape_classes"] = \
            [name, *(other for other in names if other != name)]
        web_ui.template_args["shape_use_common_options"] = True

    web_ui.update_template_args = with_default_first
