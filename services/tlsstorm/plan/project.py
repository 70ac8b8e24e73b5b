"""A plan: the cores, bandwidth and latency an operator's volume needs at each TLS ratio,
with the cost fit's 95% interval carried into cores and bandwidth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tlsstorm.plan.latency import MAX_LOAD, p99_verdict
from tlsstorm.plan.model import CostModel

SECONDS_PER_DAY = 86_400
RUSTOCK_TRAJECTORY = (0.2, 0.3, 0.7)


@dataclass(frozen=True)
class Demand:
    peak_rate: float  # messages per second at the peak
    text: str

    @classmethod
    def of(cls, messages_per_day: float | None, peak_factor: float,
           peak_rate: float | None) -> Demand:
        if peak_rate is not None:
            return cls(peak_rate, f"peak {peak_rate:,.0f} messages/s")
        if not messages_per_day:
            raise ValueError("give --messages-per-day (with --peak-factor) or --peak-rate")
        rate = messages_per_day / SECONDS_PER_DAY * peak_factor
        return cls(rate, f"{messages_per_day:,.0f} messages/day, peak {peak_factor:g}x the "
                   f"mean: {rate:,.1f} messages/s")


@dataclass(frozen=True)
class Inputs:
    demand: Demand
    ratios: tuple[float, ...] = RUSTOCK_TRAJECTORY
    size: int | None = None  # message size; None: the size the model was measured at
    target_utilisation: float = 0.7
    slo_p99_ms: float = 500.0
    processing_cpu_ms: float | None = None  # per message; None: as measured
    per_connection: int = 1  # messages per connection


def plan(model: CostModel, inputs: Inputs) -> dict[str, Any]:
    rate = inputs.demand.peak_rate
    extra_ms = 0.0
    if inputs.processing_cpu_ms is not None:
        extra_ms = inputs.processing_cpu_ms - model.processing_cpu_us / 1000
    extra_bytes = (inputs.size - model.size) if inputs.size is not None else 0

    def row(ratio: float) -> dict[str, Any]:
        batching = model.per_connection_factor(ratio, inputs.per_connection)
        cost_ms = model.fit.cost_ms(ratio) * batching + extra_ms
        half_ms = model.fit.cost_half_width_ms(ratio) * batching
        # Per message at the margin; each server's idle share is left out (it does not grow
        # with the volume).
        busy_cores = rate * cost_ms / 1000
        bytes_in = (1 - ratio) * model.bytes_in[0] + ratio * model.bytes_in[1] + extra_bytes
        bytes_out = (1 - ratio) * model.bytes_out[0] + ratio * model.bytes_out[1]
        latency, load = model.latency, inputs.target_utilisation
        p99 = latency.predict(load, ratio) if latency else None
        bounds = latency.predict_range(load, ratio) if latency else None
        return {
            "tls_ratio": ratio,
            "cpu_ms_per_message": _range(cost_ms, half_ms),
            "cores": _range(busy_cores / inputs.target_utilisation,
                            rate * half_ms / 1000 / inputs.target_utilisation),
            "cores_busy": round(busy_cores, 3),
            "inbound_mbit_s": round(rate * bytes_in * 8 / 1e6, 3),
            "outbound_mbit_s": round(rate * bytes_out * 8 / 1e6, 3),
            "saturation_messages_per_core_s": round(1000 / cost_ms, 1) if cost_ms > 0 else None,
            "predicted_p99_ms": round(p99, 2) if p99 is not None else None,
            "p99_range_ms": None if bounds is None else {
                "low": round(bounds[0], 2),
                "high": None if bounds[1] is None else round(bounds[1], 2)},
            "meets_slo": p99_verdict(bounds, inputs.slo_p99_ms),
            "mitigations": {m.key: round(busy_cores / inputs.target_utilisation
                                         * model.saving(m, ratio), 3)
                            for m in model.mitigations},
        }

    plain = row(0.0)
    rows = [row(ratio) for ratio in inputs.ratios]
    for entry in rows:
        entry["extra_cores_vs_plain"] = round(entry["cores"]["mean"] - plain["cores"]["mean"], 3)
        entry["extra_outbound_mbit_s_vs_plain"] = round(
            entry["outbound_mbit_s"] - plain["outbound_mbit_s"], 3)
        entry["extra_inbound_mbit_s_vs_plain"] = round(
            entry["inbound_mbit_s"] - plain["inbound_mbit_s"], 3)
    return {"demand": inputs.demand.text, "peak_rate": rate,
            "target_utilisation": inputs.target_utilisation, "slo_p99_ms": inputs.slo_p99_ms,
            "size": inputs.size or model.size, "model": model.describe(),
            "all_plain": plain, "rows": rows, "notes": _notes(model, inputs, [plain, *rows])}


def _range(mean: float, half: float) -> dict[str, float]:
    return {"mean": round(mean, 4), "low": round(mean - half, 4), "high": round(mean + half, 4)}


def _notes(model: CostModel, inputs: Inputs, rows: list[dict[str, Any]]) -> list[str]:
    whose = ("the receiver process's (not only what its sessions were charged)"
             if model.server == "the receiver" else
             f"all of {model.server}'s processes, from its meter")
    split = (f"as an idle share ({model.fit.idle_cores:.3f} cores, left out of the plan) plus a "
             "cost per message" if model.fit.idle_separated else
             "as a cost per message with the idle share in it (the waves were all at one "
             "rate, so it cannot be told apart: add waves at other rates, e.g. "
             "--capacity-rates, for a smaller and exact figure)")
    notes = [f"CPU is {whose}, fitted over {model.fit.points} waves at several TLS ratios "
             f"(R^2 {model.fit.r_squared:.3f}) {split}; ranges are the fit's 95% interval. "
             "The p99 is the fitted curves' at the target utilisation: each mode's own, the "
             "slower of the modes in the mix."]
    if model.highest_load is not None and inputs.target_utilisation > model.highest_load + 0.1:
        notes.append(
            f"Extrapolated: the waves kept {model.server} at most {model.highest_load:.0%} "
            f"busy, and this plan runs it at {inputs.target_utilisation:.0%}. A server's cost "
            "per message and its p99 can grow past what was measured (Exim's did: "
            "docs/results.md); sweep up to the load you plan for (--capacity-rates).")
    elif (latency := model.latency) and latency.fitted_up_to + 0.1 \
            < inputs.target_utilisation < MAX_LOAD:
        notes.append(
            f"The p99 is extrapolated: its curves were fitted on waves that kept {model.server} "
            f"at most {latency.fitted_up_to:.0%} busy (busier ones were too close to saturation "
            f"to fit), and this plan runs it at {inputs.target_utilisation:.0%}. Near "
            "saturation a p99 grows faster than such a curve; sweep with a capacity rate "
            "between the two (--capacity-rates) for a p99 you can hold it to.")
    undecided = [row for row in rows if row["meets_slo"] is None
                 and row["predicted_p99_ms"] is not None]
    if undecided and model.latency:
        notes.append(
            "No p99 verdict at " + ", ".join(
                f"{ratio:.0%}" for ratio in sorted({row["tls_ratio"] for row in undecided}))
            + " STARTTLS: the objective is within the p99's range there (the curves' p99 at "
            f"the load the CPU fit's own error allows, +-{model.latency.load_error:.0%}, times "
            "the fitted waves' spread around them, "
            f"{model.latency.spread[0]:.2f}-{model.latency.spread[1]:.2f}x). Plan for a lower "
            "utilisation (--target-utilisation) for a verdict.")
    if model.fit.points <= 3:
        notes.append("Three waves give the fit but no interval: sweep more for one.")
    if inputs.size is not None and inputs.size != model.size:
        notes.append(f"Measured with {model.size:,}-byte messages: bandwidth is moved to "
                     f"{inputs.size:,} bytes, CPU per message is not.")
    speed = (model.machine or {}).get("openssl_speed") or {}
    if speed:
        notes.append(
            "Measured on " + str(model.machine.get("note")) + "; its `openssl speed`: "
            + ", ".join(f"{name.replace('_per_s', '')} {value:,.0f}/s"
                        for name, value in speed.items())
            + ". Scale the TLS cost by the ratio of your `openssl speed` to these.")
    if inputs.per_connection != 1:
        notes.append(f"{inputs.per_connection} messages per connection: CPU per message scaled "
                     "by the matrix's batch row against its baseline (the part per session "
                     "spread over the messages); bandwidth and latency as measured with one.")
    if model.latency is None:
        notes.append("No latency: the sweep had no wave with a session p99 below saturation "
                     "(run it with --capacity-rates).")
    return notes
