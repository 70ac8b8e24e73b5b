"""The mitigation matrix: the same waves across receiver (and client) settings, side by side.

Each row restarts the local stack with its settings, runs rounds of an all-plain and an
all-STARTTLS wave, and gives the receiver's CPU per attempted message for each (the mean of the
rounds, with its 95% interval); the cost at Rustock's 70% TLS and the saving against the
baseline, round by round, follow from them. Each row also gives the bytes the receiver sent per
STARTTLS session and the certificates it served, since the chain is most of those bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path

from tlsstorm.common.charts import bar_chart
from tlsstorm.common.intervals import mean_ci, shown
from tlsstorm.sweep.run import WavePoint, stack_runner

RUSTOCK_RATIO = 0.7


@dataclass(frozen=True)
class Row:
    label: str
    receiver_env: dict[str, str]
    sender_options: dict[str, object]


ROWS = {
    "baseline": Row("RSA-2048 leaf + intermediate, TLS 1.3 (baseline)", {}, {}),
    "self-signed": Row("self-signed RSA-2048, no chain",
                       {"TLSSTORM_RECEIVER_CERT_SHAPE": "self-signed"}, {}),
    "chain3": Row("leaf + 2 intermediates", {"TLSSTORM_RECEIVER_CERT_INTERMEDIATES": "2"}, {}),
    "ecdsa": Row("ECDSA P-256 leaf, RSA intermediate",
                 {"TLSSTORM_RECEIVER_CERT_KEY_TYPE": "ecdsa-p256"}, {}),
    "ecdsa-chain": Row("ECDSA P-256 leaf, ECDSA P-384 intermediate",
                       {"TLSSTORM_RECEIVER_CERT_KEY_TYPE": "ecdsa-p256",
                        "TLSSTORM_RECEIVER_CERT_INTERMEDIATE_KEY_TYPE": "ecdsa-p384"}, {}),
    "rsa4096": Row("RSA-4096 leaf", {"TLSSTORM_RECEIVER_CERT_KEY_TYPE": "rsa4096"}, {}),
    "tls12": Row("TLS 1.2 only", {"TLSSTORM_RECEIVER_TLS_MAX_VERSION": "1.2"}, {}),
    "resume": Row("session tickets, resuming clients", {}, {"resume": True}),
    "batch": Row("10 messages per connection", {}, {"per_connection": 10}),
    "refuse": Row("STARTTLS refused for listed senders",
                  {"TLSSTORM_RECEIVER_REFUSE_STARTTLS_FROM": "127.0.0.0/8"}, {}),
    "reject": Row("listed senders rejected at connect",
                  {"TLSSTORM_RECEIVER_REJECT_FROM": "127.0.0.0/8"}, {}),
    # The ClientHello gate (issue 15): the same TLS 1.2-only bots, without it, with it
    # learning (parsing, refusing nothing) and enforcing (an alert before OpenSSL works).
    "bots": Row("TLS 1.2-only bots (bot-tls12), no gate", {}, {"profile": "bot-tls12"}),
    "gate-learn": Row("TLS 1.2-only bots, gate learning", {
        "TLSSTORM_RECEIVER_GATE_MODE": "learn", "TLSSTORM_RECEIVER_GATE_DENY_BELOW_TLS13": "true"},
        {"profile": "bot-tls12"}),
    "gate": Row("TLS 1.2-only bots, gate denying them", {
        "TLSSTORM_RECEIVER_GATE_MODE": "enforce",
        "TLSSTORM_RECEIVER_GATE_DENY_BELOW_TLS13": "true"}, {"profile": "bot-tls12"}),
}


@dataclass
class RowResult:
    key: str
    label: str
    plain_ms_rounds: list[float]  # receiver CPU per attempted message, all plain, per round
    tls_ms_rounds: list[float]  # the same, all STARTTLS
    tls_out_bytes_per_session: float | None
    chain: str  # the certificates served, leaf first, with their DER sizes
    charged_shares: list[float]  # charged / receiver process CPU, per wave
    # The receiver process's CPU per attempted message at 70% STARTTLS, per round (all of it,
    # idle loop included: what a capacity figure needs).
    process_at_rustock_rounds: list[float] = field(default_factory=list)

    @property
    def plain_ms(self) -> float:
        return round(mean_ci(self.plain_ms_rounds)[0], 4)

    @property
    def tls_ms(self) -> float:
        return round(mean_ci(self.tls_ms_rounds)[0], 4)

    @property
    def at_rustock_rounds(self) -> list[float]:
        return [(1 - RUSTOCK_RATIO) * plain + RUSTOCK_RATIO * tls
                for plain, tls in zip(self.plain_ms_rounds, self.tls_ms_rounds, strict=True)]

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "plain_ms": self.plain_ms, "tls_ms": self.tls_ms,
                "per_connection": ROWS[self.key].sender_options.get("per_connection", 1),
                "at_rustock_ms": round(mean_ci(self.at_rustock_rounds)[0], 4)}


def run_row(key: str, rate: float, messages: int, size: int, rounds: int) -> RowResult:
    row = ROWS[key]
    plain_ms, tls_ms, shares, process = [], [], [], []
    with stack_runner(size, row.receiver_env, label=row.label) as runner:
        chain = runner.http.get(f"{runner.receiver_url}/v1/tls").json()["chain_summary"]
        runner.wave(0.5, rate, max(10, messages // 10), "  warm-up", **row.sender_options)
        for number in range(1, rounds + 1):
            plain = runner.wave(0.0, rate, messages, f"  all plain {number}/{rounds}",
                                **row.sender_options)
            tls = runner.wave(1.0, rate, messages, f"  all STARTTLS {number}/{rounds}",
                              **row.sender_options)
            plain_ms.append(round(plain.session_cpu_ms / plain.attempted, 4))
            tls_ms.append(round(tls.session_cpu_ms / tls.attempted, 4))
            shares += [_charged_share(plain), _charged_share(tls)]
            process.append(round((1 - RUSTOCK_RATIO) * _process_per_attempt(plain)
                                 + RUSTOCK_RATIO * _process_per_attempt(tls), 4))
    return RowResult(key, row.label, plain_ms, tls_ms, tls.tls_out_bytes_per_session, chain,
                     shares, process)


def _process_per_attempt(point: WavePoint) -> float:
    """The receiver process's CPU over the wave per message attempted (refused ones too)."""
    return point.process_cpu_ms_per_message * max(point.messages, 1) / max(point.attempted, 1)


def _charged_share(point: WavePoint) -> float:
    process_ms = point.process_cpu_ms_per_message * max(point.messages, 1)
    return round(point.session_cpu_ms / process_ms, 4) if process_ms else 0.0


def run_matrix(keys: list[str], rate: float, messages: int, size: int, output: Path,
               rounds: int = 1) -> Path:
    results = [run_row(key, rate, messages, size, rounds) for key in keys]
    baseline = next((r for r in results if r.key == "baseline"), results[0])
    lines = [f"{'setting':<48}{'plain ms':>16}{'TLS ms':>16}{'TLS/plain':>10}"
             f"{'at 70% TLS':>11}{'saving':>14}{'out B/TLS':>10}{'charged':>9}"
             f"{'process at 70%':>18}{'saving':>12}"]
    for result in results:
        savings = [100 * (1 - ours / theirs) for ours, theirs in
                   zip(result.at_rustock_rounds, baseline.at_rustock_rounds, strict=True)]
        process_savings = [100 * (1 - ours / theirs) for ours, theirs in zip(
            result.process_at_rustock_rounds, baseline.process_at_rustock_rounds, strict=True)]
        factor = result.tls_ms / result.plain_ms if result.plain_ms else float("nan")
        out = result.tls_out_bytes_per_session
        lines.append(f"{result.label:<48}{shown(result.plain_ms_rounds, digits=3):>16}"
                     f"{shown(result.tls_ms_rounds, digits=3):>16}{factor:>9.2f}x"
                     f"{mean_ci(result.at_rustock_rounds)[0]:>11.3f}{shown(savings, '%'):>14}"
                     f"{f'{out:,.0f}' if out else '-':>10}"
                     f"{min(result.charged_shares):>8.0%}+"
                     f"{shown(result.process_at_rustock_rounds, digits=3):>18}"
                     f"{shown(process_savings, '%'):>12}")
    if rounds > 1:
        lines.append(f"mean +- 95% interval of {rounds} rounds; savings round by round")
    lines.append("charged: the least share of the receiver process's CPU (over each wave) that "
                 "its sessions were charged, in any wave of the row; process at 70%: the "
                 "receiver process's CPU per attempted message, all of it, and its saving")
    lines.append("out B/TLS: bytes the receiver sent per STARTTLS session. Certificates served:")
    lines += [f"  {result.key}: {result.chain}" for result in results]
    table = "\n".join(lines)
    print(table)
    output.mkdir(parents=True, exist_ok=True)
    (output / "matrix.json").write_text(json.dumps(
        {"rate": rate, "messages": messages, "size": size, "rounds": rounds,
         "rustock_ratio": RUSTOCK_RATIO, "rows": [r.as_dict() for r in results]}, indent=2))
    chart = bar_chart("Receiver CPU per message at 70% STARTTLS", [r.key for r in results],
                      {"ms": [mean_ci(r.at_rustock_rounds)[0] for r in results]},
                      "CPU ms per message")
    page = output / "index.html"
    page.write_text(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>tlsstorm mitigation matrix</title><style>body{{font-family:system-ui,sans-serif;
margin:2rem auto;max-width:1000px}}.chart{{width:100%;max-width:760px}}</style></head><body>
<h1>Mitigation matrix</h1><p>{messages} messages per wave at {rate:g}/s, {size} bytes,
{rounds} round(s) per row; CPU the receiver charged to sessions, per attempted message.</p>
<pre>{escape(table)}</pre>{chart}<p>Raw data: <a href="matrix.json">matrix.json</a></p>
</body></html>""")
    print(f"report: {page.resolve()}")
    return page
