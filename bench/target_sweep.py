"""What TLS spam costs real MTAs beside tlsstorm's receiver: the same Rustock sweep (all-plain,
then 20%, 30% and 70% STARTTLS, with capacity steps at two rates) aimed at each server, a plan for
one demand from each sweep, and how far a plan from the receiver would be off for Postfix and
Exim; then held-out waves (at half and at 85% of each server's capacity, a ratio the sweep did
not send) predicted and sent. Each server runs on the last core, the generator on the first, as
two machines would. CPU: the receiver's process, Postfix's process tree (its meter), Exim's
container cgroup (its meter). Tracing off.

Needs root (Postfix's master), Debian's postfix, and Docker with tlsstorm's image for Exim
(`make images`; the first run builds it).
Usage: python bench/target_sweep.py [--servers receiver,postfix,exim]
                                    [--messages-per-day 20000000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path

from tlsstorm.common.charts import bar_chart
from tlsstorm.common.machine import machine_note
from tlsstorm.plan.fit import fit_cost
from tlsstorm.plan.latency import p99_verdict
from tlsstorm.plan.model import CostModel, from_sweep, server_cores
from tlsstorm.plan.project import Demand, Inputs, plan
from tlsstorm.sweep.command import SCENARIOS, run_sweep
from tlsstorm.sweep.report import scenario_lines
from tlsstorm.sweep.run import WavePoint, stack_runner

HELD_OUT = ((0.5, 0.5), (0.7, 0.85))  # (TLS ratio, share of the capacity at that ratio)
SLO_P99_MS = 150.0
SERVER_CORE = str((os.cpu_count() or 1) - 1)
# Each server's sweep rate and capacity steps, the last near the held-out waves' loads (a plan
# past the busiest measured load extrapolates, and Exim's cost grew there: docs/results.md).
RATES = {"receiver": (100.0, [300.0, 550.0]), "postfix": (100.0, [300.0, 600.0]),
         "exim": (30.0, [90.0, 160.0])}


def sweep(server: str, folder: Path) -> Path:
    """The server's Rustock sweep, quietly; its sweep.json."""
    rate, steps = RATES[server]
    with contextlib.redirect_stdout(io.StringIO()):
        run_sweep(ratios=None, rate=rate, messages=int(rate * 4), size=2048,
                  scenario="rustock", capacity_rates=steps, capacity_seconds=3,
                  slo_p99_ms=SLO_P99_MS, output=folder / server,
                  target=None if server == "receiver" else server)
    return folder / server / "sweep.json"


def held_out(server: str, sweep_json: Path) -> list[str]:
    """Waves the model was not fitted on: predicted, then sent; CPU per message compared."""
    model = from_sweep(sweep_json)
    limit = server_cores(json.loads(sweep_json.read_text())["waves"][0])
    lines = []
    with contextlib.redirect_stdout(io.StringIO()), stack_runner(
            target=None if server == "receiver" else server) as runner:
        runner.wave(0.5, 50, 100, "warm-up")
        for ratio, share in HELD_OUT:
            capacity = (limit - max(model.fit.idle_cores, 0.0)) / model.fit.cost_ms(ratio) * 1000
            rate = round(capacity * share)
            point = runner.wave(ratio, rate, int(rate * 4), "held out")
            cores = model.fit.cores(point.achieved_rate, ratio)
            predicted = cores / point.achieved_rate * 1000
            latency = model.latency
            p99 = latency.predict(cores / limit, ratio) if latency else None
            bounds = latency.predict_range(cores / limit, ratio) if latency else None
            verdict = p99_verdict(bounds, SLO_P99_MS)
            error = predicted / point.process_cpu_ms_per_message - 1
            measured_meets = (point.session_p99_ms or float("inf")) <= SLO_P99_MS
            lines.append(
                f"  {server} held out {ratio:.0%} STARTTLS at {rate}/s ({share:.0%} of its "
                f"capacity, {capacity:.0f}/s on {limit:g} cores): CPU/msg predicted "
                f"{predicted:.3f} ms, measured {point.process_cpu_ms_per_message:.3f} "
                f"({error:+.1%}); p99 predicted {'-' if p99 is None else f'{p99:.1f}'} ms"
                f"{_range_text(bounds)}, measured {point.session_p99_ms} ms against "
                f"{SLO_P99_MS:g} ms: verdict "
                + ("none (the range holds the objective)" if verdict is None else
                   "right" if verdict == measured_meets else "WRONG"))
    return lines


def _range_text(bounds: tuple[float, float | None] | None) -> str:
    if bounds is None:
        return ""
    low, high = bounds
    return f" ({low:.1f}-{'unbounded' if high is None else f'{high:.1f}'})"


def write_chart(models: dict[str, CostModel], folder: Path) -> Path:
    """Each server's fitted CPU per message, plain and STARTTLS, side by side."""
    chart = bar_chart("CPU per message, each server on one core (fitted over its sweep)",
                      list(models), {"plain": [m.fit.plain_ms for m in models.values()],
                                     "STARTTLS": [m.fit.tls_ms for m in models.values()]},
                      "CPU ms per message")
    path = folder / "servers.svg"
    path.write_text(chart)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="receiver,postfix,exim")
    parser.add_argument("--messages-per-day", type=float, default=20_000_000)
    parser.add_argument("--output", default="results/target-sweep")
    flags = parser.parse_args()
    # The generator (this process and what it starts) on the first core, the server measured
    # on the last (the local stack starts it there).
    os.sched_setaffinity(0, {0})
    os.environ["TLSSTORM_TARGET_CPUS"] = SERVER_CORE
    servers = flags.servers.split(",")
    folder = Path(flags.output)
    models, checks = {}, []
    for server in servers:
        print(f"{server}: sweeping ...", flush=True)
        sweep_json = sweep(server, folder)
        models[server] = from_sweep(sweep_json)
        checks += held_out(server, sweep_json)
    demand = Demand.of(flags.messages_per_day, 3.0, None)
    ratios = SCENARIOS["rustock"][1:]
    print(f"\nmachine: {machine_note()}")
    print("Rustock sweeps (four seconds a wave; capacity steps of three) at "
          + "; ".join(f"{server} {RATES[server][0]:g}/s, steps "
                      f"{', '.join(f'{rate:g}' for rate in RATES[server][1])}/s"
                      for server in servers)
          + f"; each server on core {SERVER_CORE}, the generator on core 0; CPU per message "
          "fitted over every wave (idle share apart), +- its 95% interval; busiest: the "
          "highest share of the server's cores a wave kept busy\n")
    print(f"{'server':<10}{'plain ms':>16}{'TLS ms':>16}{'TLS/plain':>11}{'busiest':>9}"
          + "".join(f"{f'cores {ratio:.0%}':>12}" for ratio in (0.0, *ratios))
          + f"{'a plan from the receiver, off by':>36}")
    plans = {server: plan(model, Inputs(demand, ratios)) for server, model in models.items()}
    for server, model in models.items():
        fit = model.fit
        cores = [plans[server]["all_plain"]["cores"]["mean"],
                 *(row["cores"]["mean"] for row in plans[server]["rows"])]
        off = ""
        if "receiver" in plans and server != "receiver":
            sink = [plans["receiver"]["all_plain"]["cores"]["mean"],
                    *(row["cores"]["mean"] for row in plans["receiver"]["rows"])]
            off = ", ".join(f"{theirs / ours - 1:+.0%}" for ours, theirs in zip(cores, sink,
                                                                                   strict=True))
        plain = f"{fit.plain_ms:.3f} +- {fit.cost_half_width_ms(0.0):.3f}"
        tls = f"{fit.tls_ms:.3f} +- {fit.cost_half_width_ms(1.0):.3f}"
        print(f"{server:<10}{plain:>16}{tls:>16}{fit.tls_ms / fit.plain_ms:>10.2f}x"
              f"{model.highest_load:>9.0%}" + "".join(f"{c:>12.2f}" for c in cores)
              + f"{off:>36}")
    print(f"\ncores for {demand.text}, sized for 70% utilisation")
    print("\nthe Rustock timeline, per server (the sweep's own waves):")
    for server in servers:
        data = json.loads((folder / server / "sweep.json").read_text())
        points = [WavePoint(**wave) for wave in data["waves"]]
        for line in scenario_lines(points, fit_cost([(p.tls_ratio, p.cpu_ms_per_message)
                                                     for p in points])):
            print(f"  {server}: {line}")
    print("\nheld out (fitted on the sweep above; CPU per message from the same source):")
    print("\n".join(checks))
    print(f"\nchart: {write_chart(models, folder)}")


if __name__ == "__main__":
    main()
