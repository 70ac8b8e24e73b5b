"""The same answer with tracing on and off (issue 33): two local stacks, one tracing every
message into its collector and one with tracing off, sent the same waves in turn. Compared: the
receiver's CPU charged per message in each mode, the sessions' TLS/plain factor, and the plan
the tracing-on collector makes from its own waves (`/v1/plan`) against the plan from the
tracing-off stack's waves saved as a sweep (`tlsstorm plan --sweep`), each with its target.

Usage: python bench/tracing_alike.py [--rounds 3] [--seconds 5] [--peak-rate 300]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
from pathlib import Path

from fixtures import certificate_files, stack_environment  # bench/ is on sys.path
from tlsstorm.common.intervals import mean_ci, shown
from tlsstorm.common.machine import machine_note
from tlsstorm.plan.model import from_sweep_data
from tlsstorm.plan.project import Demand, Inputs, plan
from tlsstorm.sweep.run import SweepRunner, WavePoint, stack_runner

RATIOS = (0.0, 0.3, 0.7, 1.0)
RATES = (100.0, 200.0)  # two rates: the fit tells the idle share from the per-message cost
PLANNED = (0.3, 0.7)
TARGET_SESSIONS_ALIKE = 0.05
TARGET_FACTOR_ALIKE = 0.05
TARGET_PLAN_ALIKE = 0.10


def charged_ms(points: list[WavePoint], ratio: float) -> list[float]:
    return [point.cpu_ms_per_message for point in points if point.tls_ratio == ratio]


def verdict(values: list[float], limit: float) -> str:
    mean, half = mean_ci(values)
    if abs(mean) + half <= limit:
        return "met"
    return "within noise of the target" if abs(mean) - half <= limit else "not met"


def planned_cores(answer: dict) -> dict[float, float]:
    return {row["tls_ratio"]: row["cores"]["mean"] for row in answer["rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="each wave's length (the collector costs a wave sent right "
                        "after another over its steady seconds: 4 s or more)")
    parser.add_argument("--peak-rate", type=float, default=300.0)
    flags = parser.parse_args()
    points: dict[str, list[WavePoint]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stacks:
        runners: dict[str, SweepRunner] = {}
        for name in ("off", "on"):
            home = Path(folder) / name
            home.mkdir()
            cert, key = certificate_files(home, "rsa2048")
            runners[name] = stacks.enter_context(stack_runner(
                overrides=stack_environment(home, cert, key), tracing=name == "on",
                label=f"the local stack, tracing {name}"))
        for name, runner in runners.items():
            runner.wave(0.5, 100, 200, f"warm-up, tracing {name}")  # 2 s: no point of a model
        for round_number in range(1, flags.rounds + 1):
            # Each wave goes to both stacks back to back, which goes first alternating.
            order = ("off", "on") if round_number % 2 else ("on", "off")
            for rate in RATES:
                for ratio in RATIOS:
                    for name in order:
                        points[name].append(runners[name].wave(
                            ratio, rate, int(rate * flags.seconds),
                            f"tracing {name} {ratio:.0%} at {rate:g}/s "
                            f"{round_number}/{flags.rounds}"))
        inputs = Inputs(Demand.of(None, 3.0, flags.peak_rate), PLANNED)
        sweep = {"settings": {"size": 2048},
                 "waves": [dataclasses.asdict(point) for point in points["off"]]}
        off_plan = plan(from_sweep_data(sweep, "the tracing-off waves"), inputs)
        on_answer = runners["on"].http.get(
            runners["on"].stack.collector_url("/v1/plan"),
            params={"peak_rate": flags.peak_rate,
                    "tls_trajectory": ",".join(map(str, PLANNED))})
        on_answer.raise_for_status()
        on_plan = on_answer.json()

    print(f"\nmachine: {machine_note()}")
    print(f"two local stacks (RSA-2048 chain, no tickets), tracing off and on, sent the same "
          f"waves in turn: {flags.rounds} round(s) of {len(RATIOS)} TLS ratios at "
          f"{' and '.join(f'{rate:g}/s' for rate in RATES)}, {flags.seconds:g} s each; "
          "mean +- 95% confidence interval over the waves")
    factors = []
    for ratio, mode in ((0.0, "plain"), (1.0, "STARTTLS")):
        off, on = charged_ms(points["off"], ratio), charged_ms(points["on"], ratio)
        change = [b / a - 1 for a, b in zip(off, on, strict=True)]
        mean, half = mean_ci(change)
        print(f"receiver CPU charged per {mode} message: off {shown(off, 'ms', 3)}, on "
              f"{shown(on, 'ms', 3)}; on vs off {mean:+.1%} +- {half:.1%} (target "
              f"within +-{TARGET_SESSIONS_ALIKE:.0%}: {verdict(change, TARGET_SESSIONS_ALIKE)})")
        factors.append((off, on))
    (plain_off, plain_on), (tls_off, tls_on) = factors
    factor_change = [(t_on / p_on) / (t_off / p_off) - 1 for p_off, p_on, t_off, t_on
                     in zip(plain_off, plain_on, tls_off, tls_on, strict=True)]
    mean, half = mean_ci(factor_change)
    print(f"the sessions' TLS/plain factor, on vs off: {mean:+.1%} +- {half:.1%} (target within "
          f"+-{TARGET_FACTOR_ALIKE:.0%}: {verdict(factor_change, TARGET_FACTOR_ALIKE)})")
    off_cores, on_cores = planned_cores(off_plan), planned_cores(on_plan)
    for ratio in PLANNED:
        change = on_cores[ratio] / off_cores[ratio] - 1
        met = "met" if abs(change) <= TARGET_PLAN_ALIKE else "not met"
        print(f"plan for {flags.peak_rate:g} messages/s at {ratio:.0%} STARTTLS: from the "
              f"tracing-on collector's waves {on_cores[ratio]:.3f} cores, from the tracing-off "
              f"sweep {off_cores[ratio]:.3f} cores: {change:+.1%} (target within "
              f"+-{TARGET_PLAN_ALIKE:.0%}: {met})")
    for name, answer in (("tracing-on collector", on_plan), ("tracing-off sweep", off_plan)):
        fit = answer["model"]["fit"]
        print(f"  {name}: plain {fit['plain_ms']:.3f} ms, STARTTLS {fit['tls_ms']:.3f} ms per "
              f"message at the margin (factor {fit['factor']:.2f}x), idle "
              f"{fit['idle_cores']:.3f} cores, {answer['model']['source']}")


if __name__ == "__main__":
    main()
