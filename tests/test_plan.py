"""The capacity planner predicts a wave it was not fitted on (another TLS ratio, another rate):
its receiver CPU within 15% and its latency verdict right, against the real stack."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace

import httpx
import pytest

from tests.locust_helpers import free_port
from tlsstorm.plan.latency import fit_latency, p99_verdict
from tlsstorm.plan.model import ModelError, from_sweep
from tlsstorm.plan.project import Demand, Inputs, plan
from tlsstorm.sweep.hold_out import hold_out
from tlsstorm.sweep.run import stack_runner

FITTED = [(0.0, 60.0, 240), (0.0, 150.0, 450), (1.0, 60.0, 240), (1.0, 150.0, 450),
          (0.3, 100.0, 300)]
HELD_OUT = (0.6, 120.0, 480)
SLO_P99_MS = 200.0


@pytest.mark.timeout(420)
def test_a_held_out_wave_is_predicted_within_15_percent_and_its_verdict_is_right(tmp_path):
    ports = {name: str(free_port()) for name in (
        "TLSSTORM_RECEIVER_SMTP_PORT", "TLSSTORM_RECEIVER_HTTP_PORT", "TLSSTORM_SENDER_HTTP_PORT",
        "TLSSTORM_COLLECTOR_HTTP_PORT")}
    ports["TLSSTORM_COLLECTOR_DB_PATH"] = str(tmp_path / "collector.sqlite")
    attempts = []
    with stack_runner(overrides=ports) as runner:
        # A fresh receiver's first waves cost it more than later ones: they are not measured.
        runner.wave(0.5, 50, 50, "warm-up")
        runner.wave(*HELD_OUT, "warm-up at the held-out wave's load")
        # Three interleaved rounds: the machine's drift over a minute falls on both sides, and
        # its wave-to-wave noise (about 6% on a 4 s wave on a shared 2-core VM) averages down;
        # the held-out wave's median stands for it (one wave in a few costs far more). A miss
        # is measured once more, both printed: on the shared CI machine two of three held-out
        # waves once cost a fifth more than the same waves minutes before and after (-22%,
        # where this machine's runs give -1% to +4%); a model that is wrong misses twice.
        for _ in range(2):
            held, fitted = hold_out(runner, FITTED, HELD_OUT, SLO_P99_MS, rounds=3)
            attempts.append(held.text())
            print(held.text())
            assert all(not point.generator_limited for point in fitted)
            if abs(held.error) <= 0.15:
                break

    assert abs(held.error) <= 0.15, "; ".join(attempts)
    assert held.verdict_right, held.text()


@pytest.mark.parametrize(("args", "message"), [
    (["--sweep", "no/such/sweep.json", "--peak-rate", "100"],
     "cannot read no/such/sweep.json"),
    (["--sweep", "{sweep}"], "give --messages-per-day (with --peak-factor) or --peak-rate"),
    (["--sweep", "{sweep}", "--peak-rate", "100", "--tls-trajectory", "0.2,1.5"],
     "a TLS ratio is between 0 and 1"),
    (["--sweep", "{sweep}", "--peak-rate", "100", "--target-utilisation", "1"],
     "a utilisation is above 0 and below 1"),
    (["--sweep", "{one_ratio}", "--peak-rate", "100"], "two or more TLS ratios"),
])
def test_plan_refuses_what_it_cannot_honour_with_one_line(tmp_path, args, message):
    wave = {"achieved_rate": 50.0, "process_cpu_ms_per_message": 1.0, "session_p99_ms": 5.0,
            "plain_bytes_per_session": 2400, "plain_out_bytes_per_session": 300,
            "tls_bytes_per_session": 7000, "tls_out_bytes_per_session": 4000}
    (tmp_path / "sweep.json").write_text(json.dumps({"waves": [
        {**wave, "tls_ratio": 0.0}, {**wave, "tls_ratio": 1.0}, {**wave, "tls_ratio": 0.5}]}))
    (tmp_path / "one.json").write_text(json.dumps({"waves": [{**wave, "tls_ratio": 0.3}] * 3}))
    paths = {"sweep": tmp_path / "sweep.json", "one_ratio": tmp_path / "one.json"}
    finished = subprocess.run(
        [sys.executable, "-m", "tlsstorm", "plan", *[arg.format(**paths) for arg in args]],
        capture_output=True, text=True, timeout=60)

    assert finished.returncode != 0
    assert message in finished.stderr, finished.stderr
    assert "Traceback" not in finished.stderr


def test_the_collector_plans_from_its_own_waves_as_json_and_as_a_page(
    start_collector, start_receiver, start_sender
):
    from tests.helpers import exporting_to

    collector = start_collector()
    empty = httpx.get(f"{collector.http}/v1/plan", params={"peak_rate": 500})
    assert empty.status_code == 409 and "two or more TLS ratios" in empty.json()["detail"]

    _receiver, sender = exporting_to(collector.http, start_receiver, start_sender)
    # In one process with the receiver, the sender may look busy in a wave (its CPU is the
    # process's): that wave is left out, as a generator-limited one is; five leave at least
    # three, over the range planned for. Back to back, each is costed over its steady seconds.
    for ratio, rate in ((0.0, 30), (1.0, 30), (0.5, 60), (0.3, 45), (0.7, 45)):
        wave = httpx.post(f"{sender.http}/v1/waves", json={
            "rate": rate, "duration_s": 4, "tls_ratio": ratio}).json()
        while httpx.get(f"{sender.http}/v1/waves/{wave['id']}").json()["status"] == "running":
            time.sleep(0.1)
    time.sleep(2.5)  # the receiver's process samples of the last wave's seconds

    answer = httpx.get(f"{collector.http}/v1/plan", params={
        "messages_per_day": 20_000_000, "tls_trajectory": "0.2,0.3,0.7"})
    assert answer.status_code == 200, answer.text
    plan = answer.json()
    assert plan["model"]["source"].startswith("the collector's stored waves (")
    assert [row["tls_ratio"] for row in plan["rows"]] == [0.2, 0.3, 0.7]
    assert all(row["cores"]["mean"] > 0 and row["inbound_mbit_s"] > 0
               for row in plan["rows"]), (plan["rows"], plan["model"])
    page = httpx.get(f"{collector.http}/plan", params={"messages_per_day": 20_000_000})
    assert page.status_code == 200 and page.text.count("<svg") >= 2
    assert "694.4 messages/s" in page.text
    bad = httpx.get(f"{collector.http}/v1/plan", params={"peak_rate": 5,
                                                         "tls_trajectory": "0.2,x"})
    assert bad.status_code == 422 and "tls_trajectory" in bad.json()["detail"]


def test_back_to_back_waves_are_costed_over_the_seconds_each_had_alone_less_telemetry():
    """A sweep's waves follow each other within a second, so the process sample over that
    second holds both: each wave is costed over its steady seconds (a wave alone, over all of
    its), and tracing's own cost (the spans a wave is known by) is the instrument's, not the
    mail server's. Cells as the collector keeps them: a receiver at 0.05 idle cores, 0.5 ms
    per plain and 1.5 ms per STARTTLS message, 0.1 ms of telemetry each; a sample is keyed by
    the second it ends."""
    from tlsstorm.collector.aggregate import PLAIN, PROCESS, RECEIVER, STARTTLS, Aggregator, Cell
    from tlsstorm.collector.costs import model_from_waves

    aggregator = Aggregator(retention_s=1e12, max_cells=10_000)
    sessions = {("plain", PLAIN): {100: 100, 101: 100, 102: 100, 103: 100, 104: 50},
                ("tls", STARTTLS): {104: 50, 105: 100, 106: 100, 107: 100, 108: 100},
                ("alone", PLAIN): {200: 60, 201: 40}}
    work_us = {PLAIN: 500, STARTTLS: 1500}
    spent: dict[int, list[int]] = {}  # second -> [process CPU us, telemetry us]
    for (wave, mode), per_second in sessions.items():
        for second, messages in per_second.items():
            cell = aggregator.cells.setdefault((wave, "receiver", RECEIVER, mode, second), Cell())
            cell.messages = cell.sessions = messages
            cpu = spent.setdefault(second + 1, [0, 0])
            cpu[0] += messages * (work_us[mode] + 100)
            cpu[1] += messages * 100
    for second in [*range(100, 111), *range(200, 203)]:
        sample = aggregator.cells[("", "receiver", RECEIVER, PROCESS, second)] = Cell()
        process_us, telemetry_us = spent.get(second, [0, 0])
        sample.process_cpu_us, sample.telemetry_cpu_us = process_us + 50_000, telemetry_us
        sample.samples = 1

    plain, tls = aggregator.wave_alone("plain"), aggregator.wave_alone("tls")
    assert (plain["window"], plain["achieved_rate"]) == ("steady", 100)
    assert plain["process_cpu_ms_per_message"] == pytest.approx(0.5 + 0.5)  # work + idle share
    assert (tls["window"], tls["achieved_rate"]) == ("steady", 100)
    assert tls["process_cpu_ms_per_message"] == pytest.approx(1.5 + 0.5)
    alone = aggregator.wave_alone("alone")  # 100 messages over the three samples' seconds
    assert (alone["window"], alone["achieved_rate"]) == ("whole", pytest.approx(100 / 3, abs=1e-3))
    assert alone["process_cpu_ms_per_message"] == pytest.approx(0.5 + 3 * 50 / 100)
    # The plan's model finds the receiver again (each wave over its whole window, as before,
    # read plain 0.575 and STARTTLS 1.61 ms).
    fit = model_from_waves(aggregator).fit
    assert (fit.idle_cores, fit.plain_ms, fit.tls_ms) == (
        pytest.approx(0.05, rel=1e-3), pytest.approx(0.5, rel=1e-3), pytest.approx(1.5, rel=1e-3))


def test_messages_per_connection_spread_the_per_session_part_measured_by_the_matrix(tmp_path):

    wave = {"session_p99_ms": 5.0, "plain_bytes_per_session": 2400,
            "plain_out_bytes_per_session": 300, "tls_bytes_per_session": 7000,
            "tls_out_bytes_per_session": 4000}
    # Exactly 1 ms per plain and 2 ms per STARTTLS message, no idle share.
    waves = [{**wave, "tls_ratio": ratio, "achieved_rate": rate,
              "process_cpu_ms_per_message": 1 + ratio}
             for ratio in (0.0, 0.5, 1.0) for rate in (50.0, 100.0)]
    (tmp_path / "sweep.json").write_text(json.dumps({"waves": waves}))
    (tmp_path / "matrix.json").write_text(json.dumps({"rows": [
        {"key": "baseline", "label": "baseline", "plain_ms": 1.0, "tls_ms": 2.0},
        {"key": "batch", "label": "10 per connection", "plain_ms": 0.55, "tls_ms": 0.7,
         "per_connection": 10}]}))
    demand = Demand.of(None, 1, 100)

    single = from_sweep(tmp_path / "sweep.json")
    with pytest.raises(ModelError, match="batch row"):
        plan(single, Inputs(demand, (0.5,), per_connection=5))
    model = from_sweep(tmp_path / "sweep.json", tmp_path / "matrix.json")
    five = plan(model, Inputs(demand, (1.0,), per_connection=5))

    # Per session: plain (1 - 0.55) x 10/9 = 0.5 of 1 ms, STARTTLS 1.3 x 10/9 of 2 ms; with 5
    # messages per connection each message carries a fifth of it.
    assert five["all_plain"]["cpu_ms_per_message"]["mean"] == pytest.approx(1 - 0.5 * 0.8)
    assert five["rows"][0]["cpu_ms_per_message"]["mean"] == pytest.approx(
        2 - 1.3 * 10 / 9 * 0.8, abs=1e-3)
    assert five["rows"][0]["mitigations"] == {"batch": pytest.approx(
        100 * five["rows"][0]["cpu_ms_per_message"]["mean"] / 1000 / 0.7 * (1 - 0.7 / 2),
        abs=1e-3)}


def test_the_collector_pointed_at_a_sweep_plans_exactly_as_the_cli(start_collector, tmp_path):
    wave = {"session_p99_ms": 5.0, "plain_bytes_per_session": 2400,
            "plain_out_bytes_per_session": 300, "tls_bytes_per_session": 7000,
            "tls_out_bytes_per_session": 4000}
    waves = [{**wave, "tls_ratio": ratio, "achieved_rate": rate,
              "process_cpu_ms_per_message": 1 + ratio + rate / 1e4}
             for ratio in (0.0, 0.5, 1.0) for rate in (50.0, 100.0)]
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"waves": waves}))
    collector = start_collector(plan_sweep=sweep)

    page = httpx.get(f"{collector.http}/v1/plan", params={
        "messages_per_day": 20_000_000, "tls_trajectory": "0.2,0.3,0.7"}).json()
    cli = json.loads(subprocess.run(
        [sys.executable, "-m", "tlsstorm", "plan", "--sweep", str(sweep), "--messages-per-day",
         "20000000", "--json"], capture_output=True, text=True, timeout=60, check=True).stdout)

    assert page["rows"] == cli["rows"] and page["model"]["source"] == str(sweep)


@pytest.mark.parametrize("busiest_rate, extrapolated", [(100.0, True), (400.0, False)])
def test_a_plan_past_the_busiest_measured_load_says_it_extrapolates(tmp_path, busiest_rate,
                                                                    extrapolated):
    """Exim's CPU per message grew past its swept rates (docs/results.md): a plan that runs a
    server busier than any wave did says so; one within the measured loads does not."""
    wave = {"session_p99_ms": 5.0, "plain_bytes_per_session": 2400,
            "plain_out_bytes_per_session": 300, "tls_bytes_per_session": 7000,
            "tls_out_bytes_per_session": 4000}
    waves = [{**wave, "tls_ratio": ratio, "achieved_rate": rate,
              "process_cpu_ms_per_message": 1 + ratio}
             for ratio in (0.0, 0.5, 1.0) for rate in (50.0, busiest_rate)]
    (tmp_path / "sweep.json").write_text(json.dumps({"waves": waves}))
    model = from_sweep(tmp_path / "sweep.json")
    busiest = busiest_rate * 2 / 1000  # all-STARTTLS at 2 ms a message
    assert model.describe()["highest_load_measured"] == pytest.approx(busiest)
    notes = plan(model, Inputs(Demand.of(None, 1, 100), (0.5,), target_utilisation=0.7))["notes"]
    assert any(note.startswith("Extrapolated") for note in notes) is extrapolated


@pytest.mark.parametrize("rates, extrapolated", [((150.0, 490.0), True),
                                                 ((150.0, 325.0, 490.0), False)])
def test_a_plan_past_the_loads_its_p99_was_fitted_on_says_it_extrapolates(tmp_path, rates,
                                                                          extrapolated):
    """A sweep whose busiest waves were too close to saturation to fit (98% busy) leaves the
    p99 curves fitted on its quieter waves only (30%): a plan at 70% says its p99 extrapolates
    (Postfix's at 85% was measured at twice such a curve's); a wave at 65% removes the note."""
    wave = {"plain_bytes_per_session": 2400, "plain_out_bytes_per_session": 300,
            "tls_bytes_per_session": 7000, "tls_out_bytes_per_session": 4000,
            "process_cpu_ms_per_message": 2.0}
    waves = [{**wave, "tls_ratio": ratio, "achieved_rate": rate,
              "session_p99_ms": 5.0 / (1 - rate * 2 / 1000)}
             for ratio in (0.0, 0.5, 1.0) for rate in rates]
    (tmp_path / "sweep.json").write_text(json.dumps({"waves": waves}))
    model = from_sweep(tmp_path / "sweep.json")
    assert model.describe()["highest_load_measured"] == pytest.approx(0.98)
    fitted_up_to = model.describe()["latency"]["fitted_up_to_load"]
    assert fitted_up_to == pytest.approx(0.65 if len(rates) == 3 else 0.3)
    notes = plan(model, Inputs(Demand.of(None, 1, 100), (0.5,), target_utilisation=0.7))["notes"]
    assert not any(note.startswith("Extrapolated") for note in notes)  # not the CPU's
    assert any(note.startswith("The p99 is extrapolated") for note in notes) is extrapolated


def test_a_p99_verdict_is_given_only_when_its_range_is_on_one_side_of_the_objective():
    """The range is the curve's at the load less and more the CPU fit's error, times the fitted
    waves' spread around it; unbounded past a tenth beyond the loads fitted."""
    # p99 = 10 + 10 / (1 - load) exactly, but for one wave 20% over the curve.
    points = [(load, 1.0, None, (10 + 10 / (1 - load)) * over, None)
              for load, over in ((0.2, 1.0), (0.4, 1.2), (0.6, 1.0))]
    curve = replace(fit_latency(points), load_error=0.1)
    assert curve.fitted_up_to == pytest.approx(0.6)
    low, high = curve.predict_range(0.5, 1.0)
    assert low == pytest.approx(curve.predict(0.45, 1.0) * curve.spread[0])
    assert high == pytest.approx(curve.predict(0.55, 1.0) * curve.spread[1])
    assert curve.spread[0] < 1.0 < curve.spread[1]
    assert p99_verdict(curve.predict_range(0.5, 1.0), high + 1) is True
    assert p99_verdict(curve.predict_range(0.5, 1.0), low - 1) is False
    assert p99_verdict(curve.predict_range(0.5, 1.0), (low + high) / 2) is None
    assert curve.predict_range(0.7, 1.0)[1] is None  # 0.77: past 0.6 + 0.1
    assert p99_verdict(curve.predict_range(0.7, 1.0), 1000) is None
    assert p99_verdict(curve.predict_range(0.7, 1.0), 1) is False
