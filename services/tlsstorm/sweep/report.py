"""The sweep's report: text for the terminal, HTML with plots, CSV and JSON for analysis."""

from __future__ import annotations

import csv
import datetime
import json
from html import escape
from pathlib import Path
from typing import Any

from tlsstorm.common.charts import bar_chart, line_chart
from tlsstorm.common.cpu_limit import usage_sentence
from tlsstorm.plan.fit import CostFit
from tlsstorm.sweep.run import Capacity, WavePoint


def server_of(points: list[WavePoint]) -> str:
    """Who paid: the receiver, or the server at an address (measured by its meter)."""
    metered = next((point for point in points if point.measured_by == "meter"), None)
    return f"the server at {metered.target}" if metered else "the receiver"


def _mean(values: list[float | None]) -> float:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else 0.0


def scenario_lines(points: list[WavePoint], fit: CostFit) -> list[str]:
    """What the server pays at each TLS ratio compared with all-plain traffic."""
    baseline = next((p for p in points if p.tls_ratio == 0), None)
    lines = []
    for point in points:
        if point.tls_ratio == 0:
            continue
        versus = fit.predict(point.tls_ratio) / fit.plain_ms if fit.plain_ms else float("nan")
        line = (f"at {point.tls_ratio:.0%} STARTTLS {server_of(points)} pays "
                f"{point.cpu_ms_per_message:.3f} ms CPU per message (fit: {versus:.2f}x "
                "all-plain)")
        if baseline and baseline.plain_bytes_per_session and point.tls_bytes_per_session:
            mixed = (1 - point.tls_ratio) * baseline.plain_bytes_per_session + \
                point.tls_ratio * point.tls_bytes_per_session
            line += f", {mixed / baseline.plain_bytes_per_session:.2f}x the bytes on the wire"
        lines.append(line)
    return lines


def text_summary(points: list[WavePoint], fit: CostFit,
                 capacity: dict[float, Capacity]) -> str:
    lines = [f"{'TLS ratio':>9} {'msgs':>6} {'msg/s':>7} {'CPU ms/msg':>11} {'process':>8} "
             f"{'hs p50':>7} {'hs p99':>7} {'sess p99':>8} {'RSS MiB':>8} {'open':>5} "
             f"{'capacity':>9}"]
    for point in points:
        lines.append(
            f"{point.tls_ratio:>9.0%} {point.messages:>6} {point.achieved_rate:>7.1f} "
            f"{point.cpu_ms_per_message:>11.3f} {point.process_cpu_ms_per_message:>8.3f} "
            f"{_cell(point.handshake_p50_ms):>7} "
            f"{_cell(point.handshake_p99_ms):>7} {_cell(point.session_p99_ms):>8} "
            f"{_cell(point.peak_rss_mib):>8} {point.peak_sessions:>5} "
            f"{capacity[point.tls_ratio].text() if point.tls_ratio in capacity else '':>9}")
    limited = [point for point in points if point.generator_limited]
    for point in limited:
        lines.append(f"GENERATOR-LIMITED: the {point.tls_ratio:.0%} wave at {point.rate:g}/s "
                     f"({usage_sentence('sender', point.sender_cpu)}); its figures describe the "
                     f"sender as much as {server_of(points)}")
    if any(found.generator_limited_at is not None for found in capacity.values()):
        lines.append("capacity N*: the sender ran out of CPU at the next rate, so the "
                     "receiver's capacity is at least N; give the sender more CPU or replicas")
    if any(found.lower_bound for found in capacity.values()):
        lines.append("capacity >=N: every rate tried held the SLO, so N is a lower bound; "
                     "N-M: N held, M did not")
    if points and points[0].measured_by == "meter":
        lines.append(f"CPU ms/msg and process: all of {server_of(points)}'s processes over the "
                     "wave (its meter, from the kernel), per message accepted; RSS MiB: their "
                     "PSS at its peak in the wave; handshake and session latency, bytes and "
                     "outcomes: from the sender's side (no spans come from that server)")
    else:
        covered = sum(p.cpu_ms_per_message * p.messages for p in points) / max(
            sum(p.process_cpu_ms_per_message * p.messages for p in points), 1e-9)
        lines.append(f"CPU ms/msg: charged to sessions; process: the receiver process's CPU "
                     f"over the wave, per message ({covered:.0%} of it charged, all waves); RSS "
                     "MiB: the receiver's peak RSS in the wave, open: most sessions open at "
                     "once")
    lines.append(f"fit: CPU ms/msg = {fit.plain_ms:.3f} x plain + {fit.tls_ms:.3f} x TLS "
                 f"(TLS/plain {fit.factor:.2f}x, R^2 {fit.r_squared:.3f})")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:g}" if value >= 100 else f"{value:.2f}"


def write_report(folder: Path, points: list[WavePoint], fit: CostFit,
                 capacity: dict[float, Capacity], settings: dict[str, Any],
                 scenario: str | None, extra: dict[str, Any] | None = None) -> Path:
    """The table (waves.csv), everything as JSON (sweep.json, with `extra`: what a capacity
    plan reads) and the HTML page."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "waves.csv").open("w", newline="") as table:
        rows = [point.csv_row() for point in points]
        writer = csv.DictWriter(table, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    (folder / "sweep.json").write_text(json.dumps({
        "settings": settings, "scenario": scenario,
        "fit": fit.as_dict(),
        "capacity": {str(ratio): found.as_dict() for ratio, found in capacity.items()},
        "waves": [point.as_dict() for point in points], **(extra or {})}, indent=2))
    ratios = [point.tls_ratio for point in points]
    server = server_of(points)
    cpu_chart = line_chart(
        f"CPU per message of {server} vs TLS ratio",
        {"measured": [(p.tls_ratio * 100, p.cpu_ms_per_message) for p in points],
         f"fit {fit.plain_ms:.2f} + {fit.tls_ms - fit.plain_ms:.2f} x ratio":
             [(r * 100, fit.predict(r)) for r in (min(ratios), max(ratios))]},
        "% of messages with STARTTLS", "CPU ms per message")
    handshake_chart = line_chart(
        "Handshake latency " + ("at the receiver" if server == "the receiver"
                                else "seen by the sender"),
        {"p50": [(p.tls_ratio * 100, p.handshake_p50_ms) for p in points if p.handshake_p50_ms],
         "p95": [(p.tls_ratio * 100, p.handshake_p95_ms) for p in points if p.handshake_p95_ms],
         "p99": [(p.tls_ratio * 100, p.handshake_p99_ms) for p in points if p.handshake_p99_ms]},
        "% of messages with STARTTLS", "ms")
    bytes_chart = bar_chart(
        "Wire bytes per session", ["plain", "STARTTLS"],
        {"in + out": [_mean([p.plain_bytes_per_session for p in points]),
                      _mean([p.tls_bytes_per_session for p in points])]}, "bytes")
    capacity_chart = line_chart(
        f"Capacity (session p99 <= {settings.get('slo_p99_ms')} ms)",
        {"sustained (a rate above failed)": [
            (ratio * 100, found.sustained if not found.lower_bound else None)
            for ratio, found in sorted(capacity.items())],
         "at least (no rate tried failed)": [
            (ratio * 100, found.sustained if found.lower_bound else None)
            for ratio, found in sorted(capacity.items())]},
        "% of messages with STARTTLS", "messages per second") if capacity else ""
    rows = "".join(
        f"<tr><td class=n>{p.tls_ratio:.0%}</td><td class=n>{p.messages}</td>"
        f"<td class=n>{p.achieved_rate:.1f}</td><td class=n>{p.cpu_ms_per_message:.3f}</td>"
        f"<td class=n>{_cell(p.handshake_p50_ms)}</td><td class=n>{_cell(p.handshake_p99_ms)}"
        f"</td><td class=n>{_cell(p.tls_out_bytes_per_session)}</td></tr>" for p in points)
    scenario_html = "".join(f"<li>{escape(line)}</li>" for line in scenario_lines(points, fit))
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = folder / "index.html"
    page.write_text(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>tlsstorm sweep</title><style>
body{{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1000px}}
td,th{{padding:.25rem .7rem;border-bottom:1px solid #e2e8f0}}.n{{text-align:right}}
.grid{{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:1rem}}
.chart{{width:100%}}</style></head><body>
<h1>TLS ratio sweep{escape(f" ({scenario})" if scenario else "")}</h1>
<p>{escape(json.dumps(settings))}; generated {generated}.</p>
<p><b>CPU per message of {escape(server)} = {fit.plain_ms:.3f} ms x plain + {fit.tls_ms:.3f} ms
x TLS</b>
(TLS/plain {fit.factor:.2f}x, R&sup2; {fit.r_squared:.3f}).</p>
<ul>{scenario_html}</ul>
<table><tr><th>TLS</th><th>messages</th><th>msg/s</th><th>CPU ms/msg</th><th>handshake p50</th>
<th>handshake p99</th><th>TLS out bytes/session</th></tr>{rows}</table>
<div class=grid>{cpu_chart}{handshake_chart}{bytes_chart}{capacity_chart}</div>
<p>Raw data: <a href="waves.csv">waves.csv</a>, <a href="sweep.json">sweep.json</a>.</p>
</body></html>""")
    return page
