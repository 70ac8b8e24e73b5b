"""The benchmarks run end to end and print each figure beside its anchor and target. Tiny runs:
what is checked is that every figure is there and well formed, never how fast anything is."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import _stack_env

ROOT = Path(__file__).resolve().parents[1]
FIGURE = r"[\d,]+(?:\.\d+)? \+- [\d,]+(?:\.\d+)?"  # a mean and its interval, "1,234 +- 56"


def _bench(tmp_path: Path, script: str, *flags: str) -> str:
    finished = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *flags], cwd=tmp_path, env=_stack_env(),
        capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return finished.stdout


def test_receiver_cost_prints_every_figure_beside_its_anchor(tmp_path):
    out = _bench(tmp_path, "receiver_cost.py", "--repeat", "2", "--messages", "60",
                 "--key-types", "ecdsa-p256")

    assert re.search(rf"openssl s_server {FIGURE} us CPU per full handshake", out), out
    assert re.search(rf"Python's ssl over memory BIOs {FIGURE} us \(server\), {FIGURE} us "
                     r"\(client\)", out), out
    assert re.search(rf"half of the handshake is {FIGURE} us .* STARTTLS message: {FIGURE} x",
                     out), out
    for row in ("receiver, charged to sessions", "receiver process", "sender process",
                "  of which its engine thread", "receiver, charged, tracing on",
                "receiver process, tracing on", "sender process, tracing on",
                "  of which telemetry"):
        assert re.search(rf"^{re.escape(row)} +{FIGURE} +{FIGURE} +{FIGURE} x$", out,
                         re.MULTILINE), row
    assert re.search(r"extra CPU for STARTTLS \(charged to sessions\).*target <= 1\.3x: "
                     r"(met|not met|within noise of the target)", out), out
    assert out.count("(target <= 0.5: ") == 4  # sender / receiver, each mode, tracing off/on
    assert re.search(r"\(charged \+ telemetry\) / process, tracing on: plain [\d.]+ \+- "
                     r"[\d.]+ x, STARTTLS", out), out
    # process overhead (receiver, sender) and sessions alike, each mode; the factor alike
    assert out.count("tracing on vs off,") == 7
    assert "(target <= +15%: " in out and "(target within +-5%: " in out


def test_profile_sessions_splits_the_cpu_of_both_services(tmp_path):
    out = _bench(tmp_path, "profile_sessions.py", "--messages", "150", "--key-type",
                 "ecdsa-p256")

    for service in ("receiver", "sender"):
        assert re.search(rf"^{service}: process CPU per message plain [\d,]+ us, starttls",
                         out, re.MULTILINE), out
    assert "TLS: handshake and records (OpenSSL via ssl)" in out
    if shutil.which("perf") or os.environ.get("CI") == "true":  # .ci/run installs it
        assert re.search(r"^OpenSSL .*\d+\.\d% +[\d,]+$", out, re.MULTILINE), out
    stacks = sorted(path.name for path in (tmp_path / "results" / "profiles").glob("*.txt"))
    assert stacks == ["plain-receiver.txt", "plain-sender.txt", "starttls-receiver.txt",
                      "starttls-sender.txt"]


@pytest.mark.skipif(
    (not shutil.which("postfix") or os.geteuid() != 0) and os.environ.get("CI") != "true",
    reason="Debian's postfix and root are needed (make system-deps installs postfix)")
def test_postfix_compare_puts_both_servers_side_by_side(tmp_path):
    out = _bench(tmp_path, "postfix_compare.py", "--repeat", "2", "--messages", "40",
                 "--rate", "40", "--key-type", "ecdsa-p256")

    for row in ("Postfix smtpd", "Postfix, all processes", "receiver, process",
                "receiver, charged"):
        assert re.search(rf"^{re.escape(row)} +{FIGURE} +{FIGURE} +{FIGURE}$", out,
                         re.MULTILINE), row
    assert out.count("receiver's factor, ") == 6
    assert "plain session from smtp-source, receiver process CPU / all Postfix's" in out
    assert "plain session from smtp-source, receiver CPU charged to sessions / smtpd's" in out


def test_span_cost_splits_building_from_encoding(tmp_path):
    out = _bench(tmp_path, "span_cost.py", "--sessions", "200", "--requests", "20")

    for mode, spans in (("plain", 1), ("STARTTLS", 2)):
        assert re.search(rf"{mode} session, {spans} span\(s\): recorded into OTLP bytes +"
                         r"[\d.]+ us; as ReadableSpans: build +[\d.]+ us \+ OTLP encoding +"
                         r"[\d.]+ us \(OpenTelemetry's encoder: +[\d.]+ us\)", out), out
    assert re.search(r"one export request of 200 plain sessions' spans \([\d,]+ B\) to a "
                     r"collector on loopback, exporter thread CPU: requests [\d,]+ us, "
                     r"urllib3 [\d,]+ us, http.client [\d,]+ us", out), out


@pytest.mark.skipif((os.geteuid() != 0 or (os.cpu_count() or 1) < 2)
                    and os.environ.get("CI") != "true",
                    reason="steering loopback's receive path (RPS) needs root and two cores")
def test_loopback_share_prints_both_modes_and_restores_rps(tmp_path):
    rps = Path("/sys/class/net/lo/queues/rx-0/rps_cpus")
    before = rps.read_text()
    out = _bench(tmp_path, "loopback_share.py", "--sessions", "60", "--repeat", "2")

    for mode in ("plain", "STARTTLS"):
        assert re.search(rf"^{mode} +{FIGURE} +{FIGURE} +-?[\d,]+ \+- [\d,]+ %$", out,
                         re.MULTILINE), out
    assert "TLS/plain:" in out and "receive paths steered away" in out
    assert rps.read_text() == before


def test_memory_per_session_compares_three_servers(tmp_path):
    out = _bench(tmp_path, "memory_per_session.py", "--sessions", "20", "--repeat", "2",
                 "--key-type", "ecdsa-p256")

    rows = ["tlsstorm receiver", "aiosmtpd Controller"]
    if shutil.which("postfix") and os.geteuid() == 0:
        rows += ["Postfix smtpd (PSS)", "Postfix smtpd (RSS)"]
    for row in rows:
        assert re.search(rf"^{re.escape(row)} +{FIGURE} +{FIGURE}$", out, re.MULTILINE), out


def test_tls_client_halves_prints_each_end_of_both_stacks(tmp_path):
    out = _bench(tmp_path, "tls_client_halves.py", "--handshakes", "20", "--repeat", "2",
                 "--key-types", "ecdsa-p256")

    assert re.search(rf"^ecdsa-p256 +OpenSSL 3\.0 via Python ssl +{FIGURE} +{FIGURE}$", out,
                     re.MULTILINE), out
    assert re.search(rf"^ +rustls 0\.23 \(ring\) +{FIGURE} +{FIGURE}$", out, re.MULTILINE), out


def test_client_stack_floor_sets_each_stack_beside_the_receiver_it_drives(tmp_path):
    out = _bench(tmp_path, "client_stack_floor.py", "--messages", "40", "--rate", "100",
                 "--repeat", "2", "--key-types", "ecdsa-p256")

    def row(label: str) -> tuple[str, str]:
        found = re.search(rf"^{re.escape(label)} +({FIGURE}|-) +({FIGURE})$", out, re.MULTILINE)
        assert found, (label, out)
        return found.groups()

    def us(cell: str) -> float:
        return float(cell.split()[0].replace(",", ""))

    for label in ("tlsstorm sender process (rustls)", "  of which its engine thread (C, rustls)",
                  "sender on its reference engine (aiosmtplib)",
                  "rustls program's process (no Python)"):
        plain, starttls = row(label)
        assert us(starttls) > us(plain) > 0, (label, out)  # its handshakes cost CPU: TLS ran
    # Pure Python per reply costs more than the compiled engine's whole process.
    assert us(row("sender on its reference engine (aiosmtplib)")[0]) > us(
        row("tlsstorm sender process (rustls)")[0]), out
    for label in ("tlsstorm sender process (OpenSSL 3.0)",
                  "  of which its engine thread (C, OpenSSL)"):
        assert row(label)[0] == "-", out  # plain is the same on both stacks: run once
    # The receiver under each client: every session was a real one (answered in Python).
    drove = re.findall(rf"^  the receiver process it drove +({FIGURE}|-) +({FIGURE})$", out,
                       re.MULTILINE)
    assert len(drove) == 4 and all(us(cell) > 100 for cells in drove for cell in cells
                                   if cell != "-"), out
    for label in ("tlsstorm sender process (rustls)", "rustls program's process (no Python)"):
        assert re.search(rf"^  {re.escape(label)} +plain [\d.]+ \+- [\d.]+ x \(.+\); "
                         r"STARTTLS [\d.]+ \+- [\d.]+ x \(.+\)$", out, re.MULTILINE), out
    assert re.search(r"^  tlsstorm sender process \(OpenSSL 3\.0\) +STARTTLS [\d.]+ \+- "
                     r"[\d.]+ x \(.+\)$", out, re.MULTILINE), out
