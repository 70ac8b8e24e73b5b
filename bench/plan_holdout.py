"""The capacity planner against waves it was not fitted on: fit on waves at five TLS ratios and
two rates, predict each held-out wave (other ratios, other rates, up to near saturation), send
it, compare its receiver CPU and its latency verdict. Tracing off, the receiver on one core.

Usage: python bench/plan_holdout.py [--seconds 4] [--slo-p99-ms 50]
"""

from __future__ import annotations

import argparse

from tlsstorm.common.machine import machine_note
from tlsstorm.sweep.hold_out import hold_out
from tlsstorm.sweep.run import stack_runner

FITTED_RATIOS = (0.0, 0.2, 0.3, 0.7, 1.0)
FITTED_RATES = (100.0, 250.0)
HELD_OUT = ((0.5, 200.0), (0.45, 350.0), (0.1, 450.0), (0.85, 300.0), (0.6, 500.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--slo-p99-ms", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="fitted and held-out waves sent in turn this many times")
    flags = parser.parse_args()
    fitted = [(ratio, rate, int(rate * flags.seconds))
              for ratio in FITTED_RATIOS for rate in FITTED_RATES]
    results = []
    with stack_runner() as runner:
        runner.wave(0.5, 100, 200, "warm-up")
        for ratio, rate in HELD_OUT:
            held, _ = hold_out(runner, fitted, (ratio, rate, int(rate * flags.seconds)),
                               flags.slo_p99_ms, flags.rounds)
            results.append(held)
    print(f"\nmachine: {machine_note()}")
    print(f"fitted on {len(fitted)} waves ({', '.join(f'{r:.0%}' for r in FITTED_RATIOS)} "
          f"STARTTLS at {' and '.join(f'{r:g}/s' for r in FITTED_RATES)}, {flags.seconds:g} s "
          "each), refitted before each held-out wave; receiver process CPU")
    for held in results:
        print(held.text())
    errors = [abs(held.error) for held in results]
    right = sum(held.verdict_right for held in results)
    print(f"largest CPU error {max(errors):.1%} (target <= 15%: "
          f"{'met' if max(errors) <= 0.15 else 'not met'}); latency verdict right in {right} of "
          f"{len(results)}")


if __name__ == "__main__":
    main()
