"""A cost model from the collector's own stored waves: each wave's TLS ratio and rate from the
receiver's sessions, its CPU from the receiver's process samples over the wave's seconds (never
only what sessions were charged), its p99 from the sessions' durations."""

from __future__ import annotations

import statistics
from typing import Any

from tlsstorm.collector.aggregate import Aggregator
from tlsstorm.plan.model import CostModel, ModelError, fits_from_waves


def model_from_waves(aggregator: Aggregator) -> CostModel:
    measured = []
    for wave in aggregator.waves():
        point = _wave_point(aggregator.summary(wave["wave"]))
        if point is not None:
            measured.append(point)
    try:
        fit, latency = fits_from_waves(measured)
    except ValueError as error:
        raise ModelError(f"the collector's waves cannot make a model: {error} (it holds "
                         f"{len(measured)} usable waves: send waves at two or more TLS "
                         "ratios with tracing on, e.g. Locust runs with different ratios, "
                         "or plan from a saved sweep with `tlsstorm plan`)") from None
    overall = aggregator.summary()["receiver"]
    plain, tls = overall["plain"], overall["starttls"]
    sizes = [mode["message_bytes_per_message"] for mode in (plain, tls)
             if mode["message_bytes_per_message"]]
    return CostModel(
        source=f"the collector's stored waves ({len(measured)})", machine=None, fit=fit,
        size=int(statistics.fmean(sizes)) if sizes else 2048, processing_cpu_us=0,
        bytes_in=(plain["wire_bytes_in_per_message"] or 0.0,
                  tls["wire_bytes_in_per_message"] or 0.0),
        bytes_out=(plain["wire_bytes_out_per_message"] or 0.0,
                   tls["wire_bytes_out_per_message"] or 0.0),
        latency=latency)


def _wave_point(summary: dict[str, Any]) -> dict[str, float] | None:
    """A wave as a sweep saves one (TLS ratio, achieved rate, receiver process CPU per
    message, session p99); None without process samples (tracing was off) or without the
    senders' word that they had CPU to spare."""
    process, receiver = summary["process"], summary["receiver"]
    generators = summary.get("generators") or {}
    if not process or not process["seconds"] or generators.get("limited_by"):
        return None
    plain, tls = receiver["plain"]["messages"], receiver["starttls"]["messages"]
    if not plain + tls:
        return None
    p99s = [mode["duration_ms"]["p99"] for mode in (receiver["plain"], receiver["starttls"])
            if mode["duration_ms"]["p99"]]
    return {"tls_ratio": tls / (plain + tls),
            "achieved_rate": process["messages"] / process["seconds"],
            "process_cpu_ms_per_message": process["cpu_ms"] / process["messages"],
            "session_p99_ms": max(p99s) if p99s else 0.0}
