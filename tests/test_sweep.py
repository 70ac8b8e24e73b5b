"""`tlsstorm sweep`: the fit recovers known costs, and a short real sweep writes its report."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest

from tests.test_cli import _stack_env
from tlsstorm.plan.fit import fit_cost


def test_fit_recovers_plain_and_tls_costs():
    points = [(ratio, 0.6 * (1 - ratio) + 2.4 * ratio) for ratio in (0, 0.2, 0.3, 0.7, 1)]

    fit = fit_cost(points)

    assert fit.plain_ms == pytest.approx(0.6)
    assert fit.tls_ms == pytest.approx(2.4)
    assert fit.factor == pytest.approx(4.0)
    assert fit.r_squared == pytest.approx(1.0)


def test_fit_needs_two_ratios():
    with pytest.raises(ValueError, match="two or more"):
        fit_cost([(0.3, 1.0), (0.3, 1.1)])


def test_short_sweep_measures_tls_dearer_than_plain_and_writes_the_report(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "tlsstorm", "sweep", "--ratios", "0", "0.5", "1",
         "--messages", "40", "--rate", "50", "--capacity-rates", "40", "--capacity-seconds",
         "1", "--output", str(tmp_path / "sweep")],
        env=_stack_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [wave["tls_ratio"] for wave in report["waves"]] == [0, 0.5, 1]
    assert all(wave["messages"] == 40 for wave in report["waves"])
    assert report["fit"]["tls_ms"] > report["fit"]["plain_ms"] > 0
    # Only 40/s was tried and it held: a lower bound, said so.
    assert report["capacity"] == {
        ratio: {"sustained": 40.0, "failed_at": None, "lower_bound": True,
                "generator_limited_at": None}
        for ratio in ("0.0", "0.5", "1.0")}
    # Each wave says what each side spent against its limit; at 50/s nothing limited it.
    for wave in report["waves"]:
        assert wave["sender_cpu"]["limit_cores"] > 0 and wave["receiver_cpu"]["seconds"] > 0
        assert wave["limited_by"] == []
    assert ">=40" in finished.stdout and "lower bound" in finished.stdout
    # The planner reads what the sweep saved: a row per ratio of the trajectory.
    planned = subprocess.run(
        [sys.executable, "-m", "tlsstorm", "plan", "--sweep", str(tmp_path / "sweep" /
         "sweep.json"), "--messages-per-day", "20000000", "--tls-trajectory", "0.2,0.3,0.7"],
        capture_output=True, text=True, timeout=60)
    assert planned.returncode == 0, planned.stderr
    assert "694.4 messages/s" in planned.stdout
    # Its waves kept the receiver a few percent busy: at 70% its p99 has no top, no verdict.
    assert [line.split()[0] for line in planned.stdout.splitlines()
            if line.strip().endswith(" ?")] == ["0%", "20%", "30%", "70%"]
    assert "Extrapolated" in planned.stdout and "No p99 verdict" in planned.stdout
    rows = list(csv.DictReader((tmp_path / "sweep" / "waves.csv").open()))
    assert len(rows) == 3
    page = (tmp_path / "sweep" / "index.html").read_text()
    assert page.count("<svg") == 4 and "TLS/plain" in page
    assert "fit: CPU ms/msg" in finished.stdout


def test_mitigation_matrix_rows_run_side_by_side(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "tlsstorm", "sweep", "--matrix", "baseline,refuse,reject",
         "--messages", "30", "--rate", "50", "--rounds", "2", "--output", str(tmp_path / "sweep")],
        env=_stack_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    rows = {row["key"]: row for row in
            json.loads((tmp_path / "matrix" / "matrix.json").read_text())["rows"]}
    assert set(rows) == {"baseline", "refuse", "reject"}
    assert all(len(row["plain_ms_rounds"]) == len(row["tls_ms_rounds"]) == 2
               for row in rows.values())
    assert rows["baseline"]["tls_ms"] == pytest.approx(
        sum(rows["baseline"]["tls_ms_rounds"]) / 2, abs=1e-3)
    # Refusing STARTTLS removes the handshake: a "TLS" message costs what a plain one does.
    assert rows["baseline"]["tls_ms"] > 1.5 * rows["baseline"]["plain_ms"]
    assert rows["refuse"]["tls_ms"] < rows["baseline"]["tls_ms"]
    assert rows["refuse"]["tls_out_bytes_per_session"] is None
    # Rejected at connect, a session never gets to STARTTLS: every wave costs alike, round
    # after round (each wave is counted on its own, though none carries a wave header).
    rejected = rows["reject"]["plain_ms_rounds"] + rows["reject"]["tls_ms_rounds"]
    assert max(rejected) < 2 * min(rejected), rejected
    assert "saving" in finished.stdout and "+- " in finished.stdout
    # The process's CPU per attempted message too, each round; rejecting at connect saves.
    assert all(len(row["process_at_rustock_rounds"]) == 2 for row in rows.values())
    assert max(rows["reject"]["process_at_rustock_rounds"]) < min(
        rows["baseline"]["process_at_rustock_rounds"])
    assert "process at 70%" in finished.stdout


def test_unknown_matrix_row_is_a_clear_error(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "tlsstorm", "sweep", "--matrix", "baseline,magic"],
        env=_stack_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert finished.returncode != 0
    assert "unknown rows ['magic']" in finished.stderr


def _chain_der_bytes(chain: str) -> int:
    """'leaf rsa2048 1,384 B + intermediate rsa2048 1,380 B' -> 2764."""
    return sum(int(size.replace(",", "")) for size in re.findall(r"([\d,]+) B", chain))


def test_matrix_chain_rows_differ_in_bytes_out_by_the_certificates_served(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "tlsstorm", "sweep", "--matrix", "self-signed,baseline,chain3",
         "--messages", "20", "--rate", "50", "--output", str(tmp_path / "sweep")],
        env=_stack_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    rows = {row["key"]: row for row in
            json.loads((tmp_path / "matrix" / "matrix.json").read_text())["rows"]}
    counts = {key: row["chain"].count(" B") for key, row in rows.items()}
    assert counts == {"self-signed": 1, "baseline": 2, "chain3": 3}
    for smaller, larger in (("self-signed", "baseline"), ("baseline", "chain3")):
        added = _chain_der_bytes(rows[larger]["chain"]) - _chain_der_bytes(rows[smaller]["chain"])
        grown = rows[larger]["tls_out_bytes_per_session"] - \
            rows[smaller]["tls_out_bytes_per_session"]
        # One more certificate entry: its DER and TLS 1.3's 5-byte entry header.
        assert grown == pytest.approx(added + 5, abs=16), (smaller, larger)
    assert f"chain3: {rows['chain3']['chain']}" in finished.stdout
