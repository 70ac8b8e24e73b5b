"""The mitigation matrix: the same waves across receiver (and client) settings, side by side.

Each row restarts the local stack with its settings, runs an all-plain and an all-STARTTLS wave,
and gives the receiver's CPU per attempted message for each; the cost at Rustock's 70% TLS and
the saving against the baseline follow from them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path

from tlsstorm.common.charts import bar_chart
from tlsstorm.sweep.run import stack_runner

RUSTOCK_RATIO = 0.7


@dataclass(frozen=True)
class Row:
    label: str
    receiver_env: dict[str, str]
    sender_options: dict[str, object]


ROWS = {
    "baseline": Row("RSA-2048, TLS 1.3 (baseline)", {}, {}),
    "ecdsa": Row("ECDSA P-256 certificate", {"TLSSTORM_RECEIVER_CERT_KEY_TYPE": "ecdsa-p256"}, {}),
    "rsa4096": Row("RSA-4096 certificate", {"TLSSTORM_RECEIVER_CERT_KEY_TYPE": "rsa4096"}, {}),
    "tls12": Row("TLS 1.2 only", {"TLSSTORM_RECEIVER_TLS_MAX_VERSION": "1.2"}, {}),
    "resume": Row("session tickets, resuming clients", {}, {"resume": True}),
    "batch": Row("10 messages per connection", {}, {"per_connection": 10}),
    "refuse": Row("STARTTLS refused for listed senders",
                  {"TLSSTORM_RECEIVER_REFUSE_STARTTLS_FROM": "127.0.0.0/8"}, {}),
    "reject": Row("listed senders rejected at connect",
                  {"TLSSTORM_RECEIVER_REJECT_FROM": "127.0.0.0/8"}, {}),
}


@dataclass
class RowResult:
    key: str
    label: str
    plain_ms: float  # receiver CPU per attempted message, all plain
    tls_ms: float  # receiver CPU per attempted message, all STARTTLS
    tls_out_bytes_per_session: float | None

    @property
    def at_rustock_ms(self) -> float:
        return (1 - RUSTOCK_RATIO) * self.plain_ms + RUSTOCK_RATIO * self.tls_ms


def run_row(key: str, rate: float, messages: int, size: int) -> RowResult:
    row = ROWS[key]
    with stack_runner(size, row.receiver_env, label=row.label) as runner:
        runner.wave(0.5, rate, max(10, messages // 10), "  warm-up", **row.sender_options)
        plain = runner.wave(0.0, rate, messages, "  all plain", **row.sender_options)
        tls = runner.wave(1.0, rate, messages, "  all STARTTLS", **row.sender_options)
    return RowResult(key, row.label, round(plain.session_cpu_ms / plain.attempted, 4),
                     round(tls.session_cpu_ms / tls.attempted, 4), tls.tls_out_bytes_per_session)


def run_matrix(keys: list[str], rate: float, messages: int, size: int, output: Path) -> Path:
    results = [run_row(key, rate, messages, size) for key in keys]
    baseline = next((r for r in results if r.key == "baseline"), results[0])
    lines = [f"{'setting':<40}{'plain ms':>9}{'TLS ms':>9}{'TLS/plain':>10}"
             f"{'at 70% TLS':>11}{'saving':>8}"]
    for result in results:
        saving = 1 - result.at_rustock_ms / baseline.at_rustock_ms
        factor = result.tls_ms / result.plain_ms if result.plain_ms else float("nan")
        lines.append(f"{result.label:<40}{result.plain_ms:>9.3f}{result.tls_ms:>9.3f}"
                     f"{factor:>9.2f}x{result.at_rustock_ms:>11.3f}{saving:>8.0%}")
    table = "\n".join(lines)
    print(table)
    output.mkdir(parents=True, exist_ok=True)
    (output / "matrix.json").write_text(json.dumps(
        {"rate": rate, "messages": messages, "size": size, "rustock_ratio": RUSTOCK_RATIO,
         "rows": [{**asdict(r), "at_rustock_ms": r.at_rustock_ms} for r in results]}, indent=2))
    chart = bar_chart("Receiver CPU per message at 70% STARTTLS", [r.key for r in results],
                      {"ms": [r.at_rustock_ms for r in results]}, "CPU ms per message")
    page = output / "index.html"
    page.write_text(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>tlsstorm mitigation matrix</title><style>body{{font-family:system-ui,sans-serif;
margin:2rem auto;max-width:1000px}}.chart{{width:100%;max-width:760px}}</style></head><body>
<h1>Mitigation matrix</h1><p>{messages} messages per wave at {rate:g}/s, {size} bytes;
CPU the receiver charged to sessions, per attempted message.</p>
<pre>{escape(table)}</pre>{chart}<p>Raw data: <a href="matrix.json">matrix.json</a></p>
</body></html>""")
    print(f"report: {page.resolve()}")
    return page
