"""A cost model from the collector's own stored waves: each wave's TLS ratio from the
receiver's sessions, its rate and CPU from the receiver's process samples over the seconds it
had to itself (never only what sessions were charged) less what its telemetry cost (the spans
these waves are known by: the instrument's cost, which a mail server does not pay), its p99 from
the sessions' durations.

For a server tlsstorm does not run (a target with a meter), the waves aimed at it: ratio, rate,
p99 and bytes from the sender's spans, CPU from the meter's samples over the seconds each had to
itself; they are exported as a sweep's JSON, so `tlsstorm plan --sweep` on that export plans
exactly as the collector does."""

from __future__ import annotations

import statistics
from typing import Any

from tlsstorm.collector.aggregate import PLAIN, STARTTLS, Aggregator
from tlsstorm.plan.fit import fit_cost
from tlsstorm.plan.model import CostModel, ModelError, fits_from_waves, from_sweep_data


def model_from_waves(aggregator: Aggregator) -> CostModel:
    measured = []
    for wave in aggregator.waves():
        point = _wave_point(aggregator.summary(wave["wave"]), aggregator.wave_alone(wave["wave"]))
        if point is not None:
            measured.append(point)
    try:
        fits = fits_from_waves(measured)
    except ValueError as error:
        raise ModelError(f"the collector's waves cannot make a model: {error} (it holds "
                         f"{len(measured)} usable waves: send waves at two or more TLS "
                         "ratios with tracing on, e.g. Locust runs with different ratios, "
                         "each of 4 s or more when they follow each other (such a wave is "
                         "costed over its steady seconds alone), or plan from a saved sweep "
                         "with `tlsstorm plan`)") from None
    overall = aggregator.summary()["receiver"]
    plain, tls = overall["plain"], overall["starttls"]
    sizes = [mode["message_bytes_per_message"] for mode in (plain, tls)
             if mode["message_bytes_per_message"]]
    return CostModel(
        source=f"the collector's stored waves ({len(measured)})", machine=None, fit=fits.cpu,
        size=int(statistics.fmean(sizes)) if sizes else 2048, processing_cpu_us=0,
        bytes_in=(plain["wire_bytes_in_per_message"] or 0.0,
                  tls["wire_bytes_in_per_message"] or 0.0),
        bytes_out=(plain["wire_bytes_out_per_message"] or 0.0,
                   tls["wire_bytes_out_per_message"] or 0.0),
        latency=fits.latency, highest_load=fits.highest_load)


def _wave_point(summary: dict[str, Any], alone: dict[str, Any] | None
                ) -> dict[str, float] | None:
    """A wave as a sweep saves one (TLS ratio; achieved rate and receiver process CPU per
    message less telemetry, as a tracing-off sweep measures them, over the seconds it had to
    itself: `Aggregator.wave_alone`; session p99); None without process samples (tracing was
    off), without seconds of its own, or without the senders' word that they had CPU to
    spare."""
    receiver = summary["receiver"]
    generators = summary.get("generators") or {}
    if not alone or generators.get("limited_by"):
        return None
    plain, tls = receiver["plain"]["messages"], receiver["starttls"]["messages"]
    if not plain + tls:
        return None
    p99s = [mode["duration_ms"]["p99"] for mode in (receiver["plain"], receiver["starttls"])
            if mode["duration_ms"]["p99"]]
    return {"tls_ratio": tls / (plain + tls),
            "achieved_rate": alone["achieved_rate"],
            "process_cpu_ms_per_message": alone["process_cpu_ms_per_message"],
            "session_p99_ms": max(p99s) if p99s else 0.0,
            "plain_session_p99_ms": receiver["plain"]["duration_ms"]["p99"],
            "tls_session_p99_ms": receiver["starttls"]["duration_ms"]["p99"]}


def target_sweep(aggregator: Aggregator, target: str, since: float | None = None,
                 until: float | None = None) -> dict[str, Any]:
    """The waves aimed at `target` (those within [since, until], when given) as `tlsstorm
    sweep` saves them (what `tlsstorm plan --sweep` reads)."""
    waves = [point for entry in reversed(aggregator.waves(target))
             if (since is None or entry["first_unix_s"] >= since)
             and (until is None or entry["last_unix_s"] <= until)
             and (point := _target_wave_point(aggregator, target, entry["wave"])) is not None]
    sizes = [point.pop("message_bytes") for point in waves]
    return {"settings": {"measured_by": "meter", "target": target,
                         "size": int(statistics.fmean(sizes)) if sizes else 2048},
            "source": f"the collector's stored waves aimed at {target}", "waves": waves}


def model_for_target(aggregator: Aggregator, target: str) -> CostModel:
    data = target_sweep(aggregator, target)
    if not data["waves"]:
        known = ", ".join(row["target"] for row in aggregator.targets()) or "none yet"
        raise ModelError(f"no wave aimed at {target} has both the sender's spans and its "
                         f"meter's samples here (targets seen: {known}); run `tlsstorm meter` "
                         "beside that server with tracing on, and send waves at two or more "
                         "TLS ratios")
    return from_sweep_data(data, data["source"])


def target_costs(aggregator: Aggregator, target: str, wave: str | None = None,
                 since: float | None = None, until: float | None = None) -> dict[str, Any]:
    """target_summary, with the server's CPU per message per mode: fitted over the waves
    aimed at it (CPU per message against their TLS ratios), when they had two or more."""
    summary = aggregator.target_summary(target, wave, since, until)
    waves = target_sweep(aggregator, target, since, until)["waves"]
    try:
        fit = fit_cost([(point["tls_ratio"], point["process_cpu_ms_per_message"])
                        for point in waves])
    except ValueError:
        summary["per_mode"] = None
        summary["per_mode_note"] = (f"{len(waves)} wave(s) aimed at {target} with its "
                                    "meter's samples, at one TLS ratio: per-mode CPU needs "
                                    "waves at two or more")
    else:
        summary["per_mode"] = {"plain_ms": round(fit.plain_ms, 4),
                               "starttls_ms": round(fit.tls_ms, 4),
                               "factor": round(fit.factor, 3),
                               "r_squared": round(fit.r_squared, 4), "waves": len(waves)}
    return summary


def _target_wave_point(aggregator: Aggregator, target: str,
                       wave: str) -> dict[str, Any] | None:
    """A wave at a metered server as a sweep saves one; None without the meter's samples or
    the senders' word that they had CPU to spare."""
    summary = aggregator.target_summary(target, wave=wave)
    process, sender = summary["process"], summary["sender"]
    generators = summary["generators"] or {}
    alone = aggregator.wave_alone(wave, target)
    if not process or not alone or generators.get("limited_by"):
        return None
    plain, tls = sender[PLAIN], sender[STARTTLS]
    sent = plain["messages"] + tls["messages"]
    p99s = [mode["duration_ms"]["p99"] for mode in (plain, tls) if mode["duration_ms"]["p99"]]

    def per_message(mode: dict[str, Any], key: str) -> float | None:
        value = mode[key]
        return None if value is None else round(value, 3)

    return {
        "wave_id": wave, "measured_by": "meter", "target": target,
        "tls_ratio": round(tls["messages"] / sent, 4),
        "achieved_rate": alone["achieved_rate"],
        "messages": process["messages"],
        "process_cpu_ms_per_message": alone["process_cpu_ms_per_message"],
        "session_p99_ms": max(p99s) if p99s else None,
        "plain_session_p99_ms": plain["duration_ms"]["p99"],
        "tls_session_p99_ms": tls["duration_ms"]["p99"],
        # One message per session from the sender: its bytes out are the server's in.
        "plain_bytes_per_session": _both(plain),
        "plain_out_bytes_per_session": per_message(plain, "wire_bytes_in_per_message"),
        "tls_bytes_per_session": _both(tls),
        "tls_out_bytes_per_session": per_message(tls, "wire_bytes_in_per_message"),
        "receiver_cpu": {"limit_cores": process["limit_cores"]},
        "limited_by": ["target"] if process["busy_seconds"] else [],
        "message_bytes": sender[STARTTLS]["message_bytes_per_message"]
        or sender[PLAIN]["message_bytes_per_message"] or 2048,
    }


def _both(mode: dict[str, Any]) -> float | None:
    into, out = mode["wire_bytes_out_per_message"], mode["wire_bytes_in_per_message"]
    return None if into is None or out is None else round(into + out, 3)
