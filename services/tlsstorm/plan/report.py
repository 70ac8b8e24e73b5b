"""A plan as a text table (the CLI) and as an HTML section with plots (the collector's page)."""

from __future__ import annotations

from html import escape
from typing import Any

from tlsstorm.common.charts import bar_chart, line_chart


def _span(value: dict[str, float], digits: int = 2) -> str:
    if value["high"] - value["low"] < 10 ** -digits:
        return f"{value['mean']:.{digits}f}"
    return f"{value['mean']:.{digits}f} ({value['low']:.{digits}f}-{value['high']:.{digits}f})"


def text_plan(plan: dict[str, Any]) -> str:
    model = plan["model"]
    fit = model["fit"]
    lines = [
        f"demand: {plan['demand']}; cores sized for {plan['target_utilisation']:.0%} "
        f"utilisation; latency objective session p99 <= {plan['slo_p99_ms']:g} ms",
        f"model: {model['source']} on {(model['machine'] or {}).get('note', 'an unknown machine')}"
        f"; CPU of {model['server']} per message plain {fit['plain_ms']:.3f} +- "
        f"{fit['plain_ms_half_width']:.3f} ms, STARTTLS {fit['tls_ms']:.3f} +- "
        f"{fit['tls_ms_half_width']:.3f} ms (R^2 {fit['r_squared']:.3f}, {fit['points']} waves)",
        "",
        f"{'TLS':>5} {'CPU ms/msg':>20} {'cores':>20} {'+cores vs plain':>16} "
        f"{'in Mbit/s':>10} {'out Mbit/s':>11} {'+out vs plain':>14} {'msgs/s/core':>12} "
        f"{'p99 ms':>8}"]
    for row in [plan["all_plain"], *plan["rows"]]:
        extra = row.get("extra_cores_vs_plain")
        extra_out = row.get("extra_outbound_mbit_s_vs_plain")
        p99 = row["predicted_p99_ms"]
        verdict = {None: " ?" if p99 is not None else "", True: " ok", False: " SLO!"}[
            row["meets_slo"]]
        lines.append(
            f"{row['tls_ratio']:>5.0%} {_span(row['cpu_ms_per_message'], 3):>20} "
            f"{_span(row['cores']):>20} {'' if extra is None else f'{extra:+.2f}':>16} "
            f"{row['inbound_mbit_s']:>10.2f} {row['outbound_mbit_s']:>11.2f} "
            f"{'' if extra_out is None else f'{extra_out:+.2f}':>14} "
            f"{row['saturation_messages_per_core_s'] or 0:>12,.0f} "
            f"{'-' if p99 is None else f'{p99:.1f}'}{verdict}")
    mitigations = plan["rows"][0]["mitigations"] if plan["rows"] else {}
    if mitigations:
        lines.append("")
        lines.append("cores each measured mitigation would save: " + "; ".join(
            f"{key} " + ", ".join(f"{row['mitigations'][key]:.2f} at {row['tls_ratio']:.0%}"
                                  for row in plan["rows"]) for key in mitigations))
    lines.append("")
    lines += [f"- {note}" for note in plan["notes"]]
    return "\n".join(lines)


def html_plan(plan: dict[str, Any]) -> str:
    """The plan's table and plots, for the collector's report page."""
    rows = plan["rows"]
    labels = [f"{row['tls_ratio']:.0%}" for row in rows]
    cores = bar_chart("Cores needed", labels,
                      {"cores": [row["cores"]["mean"] for row in rows],
                       "all-plain": [plan["all_plain"]["cores"]["mean"] for _ in rows]}, "cores")
    bandwidth = bar_chart("Bandwidth", labels,
                          {"in": [row["inbound_mbit_s"] for row in rows],
                           "out": [row["outbound_mbit_s"] for row in rows]}, "Mbit/s")
    latency = plan["model"]["latency"]
    curve = ""
    if latency:
        points = latency["points"]
        curve = line_chart(
            "Session p99 against load: measured and the fitted curve",
            {"measured": [(p["load"] * 100, p["p99_ms"]) for p in points],
             "fitted": [(p["load"] * 100, p["predicted_ms"]) for p in points
                        if p["predicted_ms"] is not None]},
            f"% of {plan['model']['server']}'s cores busy", "session p99 ms")
    table = escape(text_plan(plan))
    return f"<pre>{table}</pre><div class=grid>{cores}{bandwidth}{curve}</div>"
