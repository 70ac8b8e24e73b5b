"""The cost report: plain vs STARTTLS table and plots, as text (demo) and as one HTML page."""

from __future__ import annotations

import datetime
from html import escape
from typing import Any

from tlsstorm.collector.aggregate import PLAIN, STARTTLS, Aggregator
from tlsstorm.common.charts import bar_chart, line_chart
from tlsstorm.common.histogram import LatencyHistogram

Row = tuple[str, float | None, float | None, float | None]


def cost_rows(cost: dict[str, Any], receiver: bool = True) -> list[Row]:
    """(label, plain, STARTTLS, TLS/plain factor) for the receiver's or the sender's side."""
    plain, tls = cost[PLAIN], cost[STARTTLS]

    def row(label: str, plain_value, tls_value, comparable: bool = True) -> Row:
        factor = None
        if comparable and plain_value and tls_value:
            factor = tls_value / plain_value
        return label, plain_value, tls_value, factor

    rows = [
        row("sessions", plain["sessions"], tls["sessions"], comparable=False),
        row("messages", plain["messages"], tls["messages"], comparable=False),
        row("handshake p50 ms", None, tls["handshake_ms"]["p50"]),
        row("handshake p95 ms", None, tls["handshake_ms"]["p95"]),
        row("handshake p99 ms", None, tls["handshake_ms"]["p99"]),
        row("handshake CPU ms", None, tls["handshake_cpu_ms_mean"]),
        row("session p50 ms" if receiver else "message p50 ms",
            plain["duration_ms"]["p50"], tls["duration_ms"]["p50"]),
        row("receiver CPU ms/msg", plain["cpu_ms_per_message"], tls["cpu_ms_per_message"]),
        row("wire bytes in/msg", plain["wire_bytes_in_per_message"],
            tls["wire_bytes_in_per_message"]),
        row("wire bytes out/msg", plain["wire_bytes_out_per_message"],
            tls["wire_bytes_out_per_message"]),
    ]
    if receiver:
        return rows
    # The sender's spans are per message and carry no receiver CPU.
    return [r for r in rows if r[0] not in ("sessions", "receiver CPU ms/msg",
                                            "handshake CPU ms")]


def cell_text(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"


def factor_text(value: float | None) -> str:
    return f"{value:.2f}x" if value else ""


def text_table(cost: dict[str, Any], receiver: bool = True) -> str:
    lines = [f"{'':<22}{'plain':>12}{'STARTTLS':>12}{'TLS/plain':>12}"]
    for label, plain, tls, factor in cost_rows(cost, receiver):
        lines.append(f"{label:<22}{cell_text(plain):>12}{cell_text(tls):>12}"
                     f"{factor_text(factor):>12}")
    return "\n".join(lines)


def outbound_sentence(cost: dict[str, Any]) -> str | None:
    """The seed's claim, checked: outbound bytes per STARTTLS message against the message's
    size, and the certificate chain that is most of them."""
    tls = cost[STARTTLS]
    ratio = cost["tls_out_bytes_per_message_over_message_bytes"]
    if ratio is None:
        return None
    sentence = (f"Per STARTTLS message the receiver sent {tls['wire_bytes_out_per_message']:,.0f}"
                f" bytes for messages of {tls['message_bytes_per_message']:,.0f} bytes: "
                f"{ratio:.2f}x the message itself")
    if tls["sessions"] and tls["messages"] != tls["sessions"]:
        sentence += (f" ({tls['messages'] / tls['sessions']:.1f} messages per session; "
                     f"{tls['wire_bytes_out_per_session']:,.0f} bytes out per session)")
    chains = tls["certificate_chains"]
    if chains:
        served = max(chains, key=chains.__getitem__)
        sentence += f". Certificates served: {served}"
        if len(chains) > 1:
            sentence += f" (and {len(chains) - 1} other chain(s) in this selection)"
    return sentence + "."


def process_sentence(process: dict[str, Any] | None) -> str:
    """What share of the receiver's process the CPU figures cover, over the same seconds."""
    if not process:
        return ("The receiver's process CPU is not known for these seconds (it reports it once "
                "a second with tracing on); CPU figures are what it charged to sessions.")
    per_message = process["cpu_ms_per_message"]
    text = (f"Over these {process['seconds']:,} s the receiver's process used "
            f"{process['cpu_ms']:,.1f} ms of CPU")
    if per_message is not None:
        text += f" ({per_message:.3f} ms per message of any wave then)"
    return (text + f"; its sessions were charged {process['charged_share']:.1%} of it, "
            f"telemetry (building and exporting spans, in no session's figure) "
            f"{process['telemetry_ms']:,.1f} ms ({process['telemetry_share']:.1%}), "
            f"{process['unattributed_ms']:,.1f} ms the rest (the HTTP API, the loop's polling, "
            "the interpreter).")


def generator_sentence(generators: dict[str, Any] | None) -> str:
    """Whether the load generators (senders, Locust workers) had CPU to spare over these
    seconds, or limited what was measured."""
    if not generators or not generators["services"]:
        return ("The senders' CPU is not known for these seconds (each reports it once a second "
                "with tracing on), so these figures may describe a starved generator.")
    parts = [f"{entry['service']} {entry['cores_mean']:.2f} cores of {entry['limit_cores']:g}, "
             f"busy {entry['busy_seconds']} of {entry['seconds']} s"
             + (f", throttled {entry['throttled_ms']:,.0f} ms" if entry["throttled_ms"] else "")
             for entry in generators["services"]]
    if generators["limited_by"]:
        return (f"GENERATOR-LIMITED: {', '.join(generators['limited_by'])} ran out of CPU "
                f"({'; '.join(parts)}); latency and capacity here describe the generator as "
                "much as the receiver: give the sender (or Locust's workers) more CPU or "
                "replicas.")
    return f"The load generators had CPU to spare ({'; '.join(parts)})."


def delivery_sentence(delivery: dict[str, Any] | None) -> str:
    """Whether every message the senders were told was accepted is in a receiver's figures,
    so a wave cut by a crash is never shown as if it were whole."""
    if not delivery:
        return ""
    sent = sum(delivery["accepted_by_senders"].values())
    missing = sum(delivery["missing_at_receivers"].values())
    extra = sum(delivery["extra_at_receivers"].values())
    starts = delivery["receiver_starts"]
    restarted = (f"; {starts:,} receiver process{'es' if starts > 1 else ''} started meanwhile "
                 "(a restart)" if starts else "")
    if not missing and not extra:
        return (f"Every one of the {sent:,} messages the senders were told were accepted is in "
                f"a receiver's session here{restarted}.")
    parts = []
    if missing:
        parts.append(f"{missing:,} have no receiver session here (a receiver ended without "
                     "exporting them: killed or crashed; or they are still on their way)")
    if extra:
        parts.append(f"{extra:,} more messages are in receivers' sessions than the senders "
                     "count (counted twice, accepted after the sender had given up waiting, or "
                     "sent by a client that is not a tlsstorm sender)")
    return (f"INCOMPLETE: of the {sent:,} messages the senders were told were accepted, "
            f"{'; '.join(parts)}{restarted}; the figures above cover what is here.")


def memory_sentence(memory: dict[str, Any] | None) -> str:
    """Memory as the second cost: the peak, and what each concurrent session holds."""
    if not memory:
        return ("The receiver's memory is not known for these seconds (it reports it with "
                "tracing on).")
    per_session = memory["bytes_per_session"]

    def kib(value: float | None) -> str:
        return f"{value / 1024:,.0f} KiB" if value else "none (too few seconds, or RSS did not " \
            "follow the sessions open)"

    return (f"Memory: the receiver's RSS peaked at {memory['peak_rss_bytes'] / 2**20:,.0f} MiB "
            f"with up to {memory['peak_sessions'][PLAIN]:,} plain and "
            f"{memory['peak_sessions'][STARTTLS]:,} STARTTLS sessions open; per concurrent "
            f"session (fitted, second by second): plain {kib(per_session[PLAIN])}, STARTTLS "
            f"{kib(per_session[STARTTLS])}.")


def _memory_chart(memory: dict[str, Any] | None) -> str:
    points = memory["points"] if memory else []
    series = {f"{label} sessions open": sorted((point[mode], point["rss_bytes"] / 2**20)
                                               for point in points)
              for mode, label in ((PLAIN, "plain"), (STARTTLS, "STARTTLS"))}
    return line_chart("Receiver RSS against concurrent sessions", series, "sessions open",
                      "RSS MiB")


def _distribution(histogram: LatencyHistogram) -> list[tuple[float, float]]:
    """Share of samples per ~10% wide latency bin, for a log-x line."""
    coarse: dict[int, int] = {}
    for index, count in histogram.counts.items():
        coarse[index // 5] = coarse.get(index // 5, 0) + count
    points = []
    for bin_index in sorted(coarse):
        low_us = 1.02 ** (bin_index * 5)
        points.append((low_us * 1.05 / 1000, coarse[bin_index] / histogram.count))
    return points


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1000px;color:#1a202c}
table{border-collapse:collapse;margin:1rem 0}
td,th{padding:.3rem .8rem;border-bottom:1px solid #e2e8f0}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.chart{width:100%;max-width:640px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:1rem}
.muted{color:#718096;font-size:.9rem}
"""


def _html_table(cost: dict[str, Any], title: str, receiver: bool = True) -> str:
    rows = "".join(
        f"<tr><td>{escape(label)}</td><td class=n>{cell_text(plain)}</td>"
        f"<td class=n>{cell_text(tls)}</td><td class=n>{factor_text(factor)}</td></tr>"
        for label, plain, tls, factor in cost_rows(cost, receiver))
    return (f"<h2>{escape(title)}</h2><table><tr><th></th><th class=n>plain</th>"
            f"<th class=n>STARTTLS</th><th class=n>TLS/plain</th></tr>{rows}</table>")


def _fingerprint_tables(tls: dict[str, Any]) -> str:
    """STARTTLS clients by their ClientHello (JA4), when the receiver's gate read them: the
    most sessions, and the most CPU."""
    if not tls["fingerprints"]:
        return ""

    def table(entries: list[dict[str, Any]], title: str) -> str:
        rows = "".join(
            f"<tr><td><code>{escape(entry['ja4'])}</code></td><td class=n>"
            f"{entry['sessions']:,}</td><td class=n>{entry['cpu_ms']:,.1f}</td><td class=n>"
            f"{entry['denied']:,}</td></tr>" for entry in entries)
        return (f"<h3>{title}</h3><table><tr><th>JA4</th><th class=n>sessions</th>"
                f"<th class=n>CPU ms</th><th class=n>denied</th></tr>{rows}</table>")

    return ("<h2>ClientHello fingerprints (the receiver's gate)</h2>"
            + table(tls["fingerprints"], "By sessions")
            + table(tls["fingerprints_by_cpu"], "By CPU"))


def _scope(wave: str | None) -> str:
    if wave is None:
        return "all waves"
    return f"wave {escape(wave)}" if wave else "sessions without a wave id"


def plan_page(form: dict[str, str], body: str, base_url: str = "") -> str:
    """The capacity planner: a form (GET, so a plan is a link) above the plan or the reason
    there is none."""
    fields = [("messages_per_day", "messages per day"), ("peak_factor", "peak / mean"),
              ("peak_rate", "or peak messages/s"), ("tls_trajectory", "TLS ratios"),
              ("size", "message bytes"), ("target_utilisation", "target utilisation"),
              ("slo_p99_ms", "p99 objective ms"),
              ("target", "server (host:port; empty: the receiver)")]
    inputs = "".join(
        f'<label>{label} <input name="{name}" value="{escape(form.get(name, ""))}" '
        f'size=12></label> ' for name, label in fields)
    json_link = f"{base_url}/v1/plan?" + "&".join(
        f"{name}={escape(value)}" for name, value in form.items() if value)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>tlsstorm capacity planner</title><style>{_STYLE}</style></head><body>
<h1>What TLS spam will cost your mail servers</h1>
<p class=muted>Projected from the waves this collector measured (the receiver process's CPU,
its sessions' bytes and latency). <a href="{base_url}/">cost report</a> ·
<a href="{json_link}">JSON</a></p>
<form method=get action="{base_url}/plan">{inputs}<button>Plan</button></form>
{body}
</body></html>"""


def history_sentence(history: dict | None) -> str:
    """Said when the results do not survive a restart, so a wave cut by one is not read as
    whole."""
    if history is None or history["kept_across_restarts"]:
        return ""
    return (f"Results since this collector started at {_when(history['since_unix_s'])}: they "
            "are on no volume, so whatever arrived before a restart is not here.")


def render_html(aggregator: Aggregator, wave: str | None = None, since: float | None = None,
                until: float | None = None, base_url: str = "", history: dict | None = None
                ) -> str:
    """The report; links start with `base_url` (the collector's address) so that a saved copy
    opened as a file still reaches the collector."""
    summary = aggregator.summary(wave, since, until)
    receiver = summary["receiver"]
    timeline = aggregator.timeline(wave, since, until)
    throughput = {f"{mode} sessions/s": [(offset, rate) for offset, rate, _ in points]
                  for mode, points in timeline.series.items()}
    # A bin without sessions has no p95: the line breaks there instead of bridging it.
    p95 = {f"{mode} p95 ms": [(offset, value) for offset, _, value in points]
           for mode, points in timeline.series.items()}
    per_bin = "" if timeline.bin_seconds == 1 else f" (bins of {timeline.bin_seconds} s)"
    distributions = {name: _distribution(histogram)
                     for name, histogram in aggregator.distributions(wave, since, until).items()}
    bytes_chart = bar_chart(
        "Wire bytes per session (receiver)", ["plain", "STARTTLS"],
        {"in": [_per_session(receiver[mode], "wire_bytes_in") for mode in (PLAIN, STARTTLS)],
         "out": [_per_session(receiver[mode], "wire_bytes_out") for mode in (PLAIN, STARTTLS)]},
        "bytes")
    waves = "".join(
        f'<tr><td><a href="{base_url}/?wave={escape(entry["wave"])}">'
        f'{escape(entry["wave"] or "(no wave id)")}'
        f'</a></td><td class=n>{entry[PLAIN]:,}</td><td class=n>{entry[STARTTLS]:,}</td>'
        f'<td>{_when(entry["first_unix_s"])}</td></tr>' for entry in aggregator.waves()[:50])
    sentence = outbound_sentence(receiver)
    json_link = f"{base_url}/v1/summary" + (f"?wave={escape(wave)}" if wave is not None else "")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>tlsstorm cost report</title><style>{_STYLE}</style></head><body>
<h1>What STARTTLS spam costs the receiver</h1>
<p class=muted>{_scope(wave)}; {summary['spans']['aggregated']:,} spans aggregated
({summary['spans']['received']:,} received); generated {_when(None)}.
<a href="{base_url}/">all waves</a> · <a href="{json_link}">JSON</a> ·
<a href="{base_url}/plan">capacity planner</a></p>
{f"<p>{escape(history_note)}</p>" if (history_note := history_sentence(history)) else ""}
{_html_table(receiver, "Receiver: plain vs STARTTLS")}
<p>{escape(sentence or "No STARTTLS session yet.")}</p>
{f"<p>{escape(delivery)}</p>" if (delivery := delivery_sentence(summary["delivery"])) else ""}
<p>{escape(process_sentence(summary["process"]))}</p>
<p>{escape(memory_sentence(summary["memory"]))}</p>
<p>{escape(generator_sentence(summary["generators"]))}</p>
<div class=grid>
{line_chart("Latency distribution", distributions, "milliseconds (log)", "share", log_x=True)}
{bytes_chart}
{line_chart("Throughput (receiver)", throughput, "seconds since start" + per_bin,
            "sessions/s")}
{line_chart("p95 session latency (receiver)", p95, "seconds since start" + per_bin, "ms")}
{_memory_chart(summary["memory"])}
</div>
{_html_table(summary["sender"], "Sender: plain vs STARTTLS (client side)", receiver=False)}
<h2>Waves</h2><table><tr><th>wave</th><th class=n>plain</th><th class=n>STARTTLS</th>
<th>first seen</th></tr>{waves}</table>
{_targets_table(aggregator, base_url)}
{_fingerprint_tables(receiver[STARTTLS])}
<p class=muted>Receiver CPU per message is the CPU the receiver charged to each session
(<code>tlsstorm.session.cpu_us</code> on its <code>smtp.session</code> spans): every event-loop
callback run for the session, its share of polling and accepting, its queue writes. Handshake
p50/p95/p99 are wall time from the server's first <code>do_handshake</code>, waiting for the
client included; handshake CPU is the receiver's CPU during it (mean). On loopback, the
receiver's CPU includes the client's network receive path for what the receiver sends; measured
at 5-6% +- 7% (within noise; the TLS/plain factor unchanged) by
<code>bench/loopback_share.py</code>. See docs/methodology.md.</p>
</body></html>"""


def _targets_table(aggregator: Aggregator, base_url: str) -> str:
    rows = "".join(
        f'<tr><td><a href="{base_url}/?target={escape(row["target"])}">'
        f'{escape(row["target"])}</a></td><td>{"meter" if row["metered"] else "-"}</td>'
        f'<td>{"yes" if row["receiver"] else "no"}</td><td class=n>{row["waves"]:,}</td></tr>'
        for row in aggregator.targets())
    if not rows:
        return ""
    return ("<h2>Servers the waves were aimed at</h2><table><tr><th>server</th><th>CPU from"
            "</th><th>tlsstorm's receiver</th><th class=n>waves</th></tr>" + rows + "</table>")


def target_sentences(costs: dict[str, Any]) -> list[str]:
    """A metered server's CPU and memory, per message and per mode, and the meter's cost."""
    process, target = costs["process"], costs["target"]
    if not process:
        return [f"No meter sample of {target} covers these seconds: its CPU is not known here "
                "(run `tlsstorm meter --target ...` beside it, with tracing on)."]
    per_message = process["cpu_ms_per_message"]
    lines = [f"Over these {process['seconds']:,} s the server at {target} used "
             f"{process['cpu_ms']:,.1f} ms of CPU in all its processes ({process['cores_mean']:.3f}"
             f" cores of {process['limit_cores']:g}, {process['processes_mean']:g} processes on "
             "average)" + (f": {per_message:.3f} ms per message accepted"
                           if per_message is not None else "") + "."]
    per_mode = costs.get("per_mode")
    if per_mode:
        lines.append(f"Per mode, fitted over its {per_mode['waves']} waves: plain "
                     f"{per_mode['plain_ms']:.3f} ms, STARTTLS {per_mode['starttls_ms']:.3f} ms "
                     f"per message (TLS/plain {per_mode['factor']:.2f}x, R^2 "
                     f"{per_mode['r_squared']:.3f}).")
    else:
        lines.append(costs.get("per_mode_note") or "")
    lines.append(f"Memory: its processes' PSS peaked at "
                 f"{process['peak_memory_bytes'] / 2**20:,.1f} MiB. The meter itself used "
                 f"{process['meter_cpu_ms']:,.1f} ms of CPU meanwhile (not in the server's "
                 "figures).")
    if process["busy_seconds"]:
        lines.append(f"The server was busy (throttled, or above 85% of its cores) in "
                     f"{process['busy_seconds']} of these seconds: it limited the waves.")
    return lines


def render_target_html(costs: dict[str, Any], base_url: str = "") -> str:
    """A server tlsstorm does not run: the sender's view of its sessions beside its meter."""
    target = costs["target"]
    sentences = [*target_sentences(costs), generator_sentence(costs["generators"]),
                 "Sessions, handshake latency, bytes and outcomes are the sender's view (no "
                 "span comes from this server); CPU and memory are all of its processes, as "
                 "its meter read them from the kernel."]
    paragraphs = "".join(f"<p>{escape(text)}</p>" for text in sentences if text)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>tlsstorm: {escape(target)}</title><style>{_STYLE}</style></head><body>
<h1>What STARTTLS spam costs the server at {escape(target)}</h1>
<p class=muted>generated {_when(None)}. <a href="{base_url}/">all servers</a> ·
<a href="{base_url}/v1/targets/summary?target={escape(target)}">JSON</a> ·
<a href="{base_url}/plan?target={escape(target)}">capacity planner for it</a> ·
<a href="{base_url}/v1/sweep?target={escape(target)}">its waves as a sweep</a></p>
{paragraphs}
{_html_table(costs["sender"], "Sender's view: plain vs STARTTLS", receiver=False)}
</body></html>"""


def _per_session(mode_summary: dict[str, Any], key: str) -> float:
    sessions = mode_summary["sessions"]
    return mode_summary[key] / sessions if sessions else 0.0


def _when(unix_s: float | None) -> str:
    moment = datetime.datetime.fromtimestamp(unix_s, datetime.UTC) if unix_s else \
        datetime.datetime.now(datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def not_found_html(wave: str, base_url: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>tlsstorm: no '
            f'such wave</title><style>{_STYLE}</style></head><body><h1>No wave '
            f'{escape(wave)}</h1><p>No span of wave {escape(wave)} has arrived at this '
            f'collector. <a href="{base_url}/">All waves</a> lists the ones that have.</p>'
            '</body></html>')
