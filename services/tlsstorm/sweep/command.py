"""`tlsstorm sweep`: starts the local stack, runs the waves, fits, and writes the report."""

from __future__ import annotations

from pathlib import Path

from tlsstorm.common.machine import machine_record
from tlsstorm.plan.fit import fit_cost
from tlsstorm.sweep.report import scenario_lines, text_summary, write_report
from tlsstorm.sweep.run import MIN_LOAD_CPU_MS, TargetProblem, WavePoint, stack_runner

DEFAULT_RATIOS = (0.0, 0.2, 0.3, 0.5, 0.7, 1.0)
# The seed: Rustock's shift from 20% to 30% to 70% STARTTLS, against all-plain traffic.
SCENARIOS = {"rustock": (0.0, 0.2, 0.3, 0.7)}


def run_sweep(ratios: list[float] | None, rate: float, messages: int, size: int,
              scenario: str | None, capacity_rates: list[float], capacity_seconds: float,
              slo_p99_ms: float, output: Path, processing_cpu_us: int = 0,
              queue_fsync: bool = False, target: str | None = None,
              meter_url: str | None = None) -> Path:
    chosen = list(SCENARIOS[scenario] if scenario else ratios or DEFAULT_RATIOS)
    processing = {"TLSSTORM_RECEIVER_PROCESSING_CPU_US": str(processing_cpu_us),
                  "TLSSTORM_RECEIVER_QUEUE_FSYNC": str(queue_fsync).lower()}
    try:
        with stack_runner(size, processing, target=target, meter_url=meter_url) as runner:
            runner.wave(0.5, rate, max(20, messages // 10), "warm-up")
            points = [runner.wave(ratio, rate, messages, f"{ratio:>4.0%} TLS at {rate:g}/s")
                      for ratio in chosen]
            refuse_what_the_meter_missed(points)
            capacity, steps = {}, {}
            if capacity_rates:
                for ratio in chosen:
                    capacity[ratio], steps[ratio] = runner.capacity(
                        ratio, capacity_rates, capacity_seconds, slo_p99_ms)
            measured = {"measured_by": points[0].measured_by, "target": points[0].target
                        or "the receiver", "meter": getattr(runner, "meter_url", None),
                        "idle_cores": getattr(runner, "idle_cores", None)}
    except TargetProblem as problem:
        raise SystemExit(f"tlsstorm sweep: {problem}") from None
    fit = fit_cost([(point.tls_ratio, point.cpu_ms_per_message) for point in points])
    print(text_summary(points, fit, capacity))
    for line in scenario_lines(points, fit):
        print(f"  {line}")
    settings = {"rate": rate, "messages": messages, "size": size, "slo_p99_ms": slo_p99_ms,
                "processing_cpu_us": processing_cpu_us, "queue_fsync": queue_fsync, **measured}
    page = write_report(output, points, fit, capacity, settings, scenario,
                        # What `tlsstorm plan` reads beside the waves.
                        extra={"capacity_steps": {str(ratio): [step.as_dict() for step in found]
                                                  for ratio, found in steps.items()},
                               "machine": machine_record()})
    print(f"report: {page.resolve()} (with waves.csv and sweep.json beside it)")
    return page


def refuse_what_the_meter_missed(points: list[WavePoint]) -> None:
    """A metered wave whose CPU beyond idle is below what any MTA spends per message: the
    meter watches processes the load does not reach, and no plan may come of it."""
    missed = [point for point in points if point.load_cpu_ms_per_message is not None
              and point.load_cpu_ms_per_message < MIN_LOAD_CPU_MS]
    if missed:
        shown = ", ".join(f"{point.tls_ratio:.0%} TLS: {point.load_cpu_ms_per_message:.3f} ms"
                          for point in missed)
        raise TargetProblem(
            f"the meter's CPU does not follow the load ({shown} per message beyond idle, "
            f"below {MIN_LOAD_CPU_MS} ms): it watches processes that do not serve "
            f"{missed[0].target}; point it at the server's (--pid-file, --process-names, "
            "--cgroup)")
