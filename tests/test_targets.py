"""Real mail servers as the measured target (issue 32): Postfix (Debian's, as root) and Exim
(in a container of tlsstorm's image), each beside tlsstorm's meter. The meter against
the kernel's count of the server's own cgroup; a sweep, a plan from it and held-out waves whose
CPU is the cgroup's; the collector's report and plan for a target; and what a wrong setup is
told. The servers run on the last core, the generator on the first, as two machines would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import cgroups
from tests.helpers import postfix_instance_left
from tests.locust_helpers import clean_env, free_port
from tests.locust_ui_helpers import only_user_class, start_from_ui
from tests.receiver_process import ReceiverProcess, ServiceProcess
from tlsstorm.localstack.mta import certificate_files
from tlsstorm.plan.latency import p99_verdict
from tlsstorm.plan.model import CostModel, from_sweep
from tlsstorm.sweep.run import SETTLE_S, SweepRunner, WavePoint, stack_runner

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI") == "true"
SERVER_CORE = (os.cpu_count() or 1) - 1
SLO_P99_MS = 150.0
pytestmark = [pytest.mark.timeout(900), pytest.mark.skipif(
    os.geteuid() != 0 and not IN_CI, reason="Postfix's master and cgroups need root")]


@dataclass(frozen=True)
class Server:
    name: str
    address: str
    group: cgroups.AccountingGroup | None  # the ground truth: the kernel's count of its CPU
    meter: ServiceProcess

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def truth_seconds(self) -> float:
        return self.group.cpu_seconds()

    def meter_stats(self) -> dict:
        return httpx.get(f"{self.meter.http}/v1/stats", timeout=10).json()


def _greets(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as sock:
            if sock.recv(512).startswith(b"220"):
                return
        assert time.monotonic() < deadline, f"no SMTP greeting on port {port}"
        time.sleep(0.3)


@pytest.fixture(scope="module", autouse=True)
def generator_on_the_first_core() -> Iterator[None]:
    """This process and what it starts (sender, meter, collector) on the first core."""
    before = os.sched_getaffinity(0)
    if SERVER_CORE:
        os.sched_setaffinity(0, {0})
    yield
    os.sched_setaffinity(0, before)


def _meter(name: str, address: str, **watch: str) -> ServiceProcess:
    return ServiceProcess("meter", clean_env(TLSSTORM_METER_TARGET=address, **{
        f"TLSSTORM_METER_{key.upper()}": value for key, value in watch.items()}))


@pytest.fixture(scope="module")
def postfix() -> Iterator[Server]:
    """Postfix in a cgroup of its own, its smtpd processes replaced every 20 connections (so
    processes come and go while the meter reads them), watched through its master's pid
    file."""
    instance = "tlsstorm-postfix-test"
    with cgroups.accounting_group() as group, tempfile.TemporaryDirectory() as folder:
        cert, key = certificate_files("postfix.tlsstorm.test", Path(folder))
        port = free_port()
        process = subprocess.Popen(
            ["sh", "-c", f'echo $$ > {group.procs} && exec taskset -c {SERVER_CORE} bash '
             f'{ROOT}/scripts/postfix-sink.sh run {port} {cert} {key}'],
            env={**os.environ, "TLSSTORM_POSTFIX_NAME": instance,
                 "TLSSTORM_POSTFIX_MAX_USE": "20"}, start_new_session=True)
        meter = None
        try:
            _greets(port)
            meter = _meter("postfix", f"127.0.0.1:{port}",
                           pid_file=f"/var/spool/{instance}/pid/master.pid")
            yield Server("postfix", f"127.0.0.1:{port}", group, meter)
        finally:
            if meter is not None:
                meter.stop()
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    assert not postfix_instance_left(instance)


@pytest.fixture(scope="module")
def exim() -> Iterator[Server]:
    """Exim in its container, watched through the container's cgroup (the only complete
    count: its reception processes ignore SIGCHLD, so their deliveries' CPU is in no process's
    count); the ground truth reads the same kernel files itself."""
    with tempfile.TemporaryDirectory() as folder:
        cert, key = certificate_files("exim.tlsstorm.test", Path(folder))
        port, pid_file = free_port(), Path(folder) / "exim.pid"
        process = subprocess.Popen(
            ["bash", f"{ROOT}/scripts/exim-target.sh", "run", str(port), str(cert), str(key)],
            env={**os.environ, "TLSSTORM_EXIM_CPUSET": str(SERVER_CORE),
                 "TLSSTORM_EXIM_PID_FILE": str(pid_file)}, start_new_session=True)
        meter = None
        try:
            _greets(port, seconds=900)  # tlsstorm's image is built first if it is not yet
            meter = _meter("exim", f"127.0.0.1:{port}", cgroup_of_pid_file=str(pid_file))
            yield Server("exim", f"127.0.0.1:{port}", ContainerGroup(f"tlsstorm-exim-{port}"),
                         meter)
        finally:
            if meter is not None:
                meter.stop()
            process.send_signal(signal.SIGTERM)
            process.wait(60)


class ContainerGroup:
    """A container's cgroup, read from the kernel's files (the ground truth for Exim)."""

    def __init__(self, name: str) -> None:
        pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", name],
                             capture_output=True, text=True, check=True).stdout.strip()
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if Path("/sys/fs/cgroup/cgroup.controllers").exists():
            path = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
            self.stat = Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.stat"
        else:
            path = next(line.split(":", 2)[2] for line in lines
                        if "cpuacct" in line.split(":", 2)[1].split(","))
            self.stat = Path("/sys/fs/cgroup/cpuacct") / path.lstrip("/") / "cpuacct.usage"

    def cpu_seconds(self) -> float:
        text = self.stat.read_text()
        if self.stat.name == "cpu.stat":
            return int(dict(line.split() for line in text.splitlines())["usage_usec"]) / 1e6
        return int(text) / 1e9


def _wave(sender_http: str, target: str, ratio: float, rate: float, seconds: float) -> dict:
    wave = httpx.post(f"{sender_http}/v1/waves", json={
        "rate": rate, "duration_s": seconds, "tls_ratio": ratio, "target": target,
        "concurrency": 64}, timeout=30).json()
    while (state := httpx.get(f"{sender_http}/v1/waves/{wave['id']}").json())["status"] \
            == "running":
        time.sleep(0.2)
    assert state["status"] == "completed", state
    return state


@pytest.mark.parametrize("name", ["postfix", "exim"])
def test_the_meter_reads_the_server_within_5_percent_of_its_cgroup(request, name,
                                                                    start_sender):
    """Sessions come and go (Postfix replaces each smtpd after 20 connections; Exim forks a
    process per connection and per delivery): the meter's CPU, from each process's clock and
    what its parent reaped, equals the kernel's count of the server's cgroup."""
    server: Server = request.getfixturevalue(name)
    sender = start_sender(server.port)
    rate = {"postfix": 200, "exim": 60}[name]
    truth_before, meter_before = server.truth_seconds(), server.meter_stats()
    wave = _wave(sender.http, server.address, 0.7, rate, 6)
    time.sleep(SETTLE_S + 0.5)
    truth = server.truth_seconds() - truth_before
    after = server.meter_stats()
    metered = after["cpu_seconds_total"] - meter_before["cpu_seconds_total"]
    print(f"{name}: meter {metered:.3f} s, cgroup {truth:.3f} s over "
          f"{wave['plain']['ok'] + wave['tls']['ok']} messages; processes seen "
          f"{after['processes_seen']}, now {after['processes']}")
    assert wave["plain"]["ok"] + wave["tls"]["ok"] == wave["total"]
    assert after["processes_seen"] > after["processes"]  # some came and went
    assert metered == pytest.approx(truth, rel=0.05)
    # The meter's own cost is its own: a fraction of the server's.
    assert after["meter"]["cpu_seconds_total"] > 0


def test_a_meter_on_exims_processes_says_what_it_misses(exim, start_sender):
    """Watched by process name instead, Exim's deliveries escape the count, and the meter
    says so rather than passing the smaller figure for the whole."""
    sender = start_sender(exim.port)
    by_name = _meter("exim", exim.address, process_names="exim4")
    try:
        truth_before = exim.truth_seconds()
        before = httpx.get(f"{by_name.http}/v1/stats").json()
        _wave(sender.http, exim.address, 0.0, 40, 4)
        time.sleep(1.5)
        after = httpx.get(f"{by_name.http}/v1/stats").json()
        truth = exim.truth_seconds() - truth_before
    finally:
        by_name.stop()
    metered = after["cpu_seconds_total"] - before["cpu_seconds_total"]
    print(f"exim by process name: {metered:.3f} s of the cgroup's {truth:.3f} s; "
          f"{after['not_covered']}")
    assert "ignore SIGCHLD" in after["not_covered"] and "--cgroup" in after["not_covered"]
    assert metered < 0.95 * truth


@dataclass(frozen=True)
class Design:
    ratios: list[float]
    # The capacity steps: the fit needs two or more rates, and one below saturation reaches
    # near the held-out waves' load (past the busiest load its waves were fitted on a plan
    # extrapolates, its p99 too: Postfix's 400/s kept it 98% busy, unusable for the p99 curve,
    # which then came from loads under 40% and missed its 85% wave by half; Exim's from 43%
    # missed its own by a third: docs/results.md).
    rates: list[float]
    held_out: list[tuple[float, float]]  # (TLS ratio, share of the capacity at that ratio)


DESIGNS = {
    "postfix": Design([0.0, 0.3, 0.7, 1.0], [150.0, 300.0, 400.0], [(0.5, 0.5), (0.7, 0.85)]),
    "exim": Design([0.0, 0.5, 1.0], [40.0, 80.0, 120.0], [(0.7, 0.5), (0.7, 0.85)]),
}


@dataclass(frozen=True)
class HeldOutWave:
    point: WavePoint
    truth_ms: float  # CPU per message, the cgroup's over the wave and its settling
    predicted_ms: float  # the model's at the rate the wave achieved (its idle share spread)
    predicted_load: float  # the share of the server's cores the model says it kept busy

    @property
    def cpu_error(self) -> float:
        return self.predicted_ms / self.truth_ms - 1


def held_out_wave(server: Server, runner: SweepRunner, ratio: float, rate: int,
                  model: CostModel, limit: float) -> HeldOutWave:
    truth_before = server.truth_seconds()
    point = runner.wave(ratio, rate, int(rate * 4), f"held out {ratio:.0%} at {rate}/s")
    truth_ms = (server.truth_seconds() - truth_before) * 1000 / point.messages
    predicted_cores = model.fit.cores(point.achieved_rate, ratio)
    return HeldOutWave(point, truth_ms, predicted_cores / point.achieved_rate * 1000,
                       predicted_cores / limit)


@pytest.mark.parametrize("name", ["postfix", "exim"])
def test_a_sweep_of_the_server_plans_held_out_waves_within_15_percent(request, name,
                                                                      tmp_path):
    """`tlsstorm sweep --target HOST:PORT --meter URL`, then `tlsstorm plan` from its
    sweep.json; then waves it was not fitted on, one near the server's capacity, whose CPU is
    the cgroup's (not the meter's): predicted within 15%, and each p99 verdict the plan gives
    (none where the p99's range holds the objective) right."""
    from tlsstorm.sweep.command import run_sweep

    server: Server = request.getfixturevalue(name)
    design = DESIGNS[name]
    run_sweep(ratios=design.ratios, rate=design.rates[0], messages=int(design.rates[0] * 3),
              size=2048, scenario=None, capacity_rates=design.rates, capacity_seconds=3,
              slo_p99_ms=SLO_P99_MS, output=tmp_path, target=server.address,
              meter_url=server.meter.http)
    planned = subprocess.run(
        [sys.executable, "-m", "tlsstorm", "plan", "--sweep", str(tmp_path / "sweep.json"),
         "--peak-rate", "100", "--slo-p99-ms", str(SLO_P99_MS)],
        capture_output=True, text=True, timeout=60)
    assert planned.returncode == 0, planned.stderr
    assert f"CPU of the server at {server.address}" in planned.stdout
    model = from_sweep(tmp_path / "sweep.json")
    print(f"{name}: the sweep's busiest wave kept it {model.highest_load:.0%} busy, its p99 "
          f"curves fitted up to {model.latency.fitted_up_to:.0%}")
    limit = json.loads((tmp_path / "sweep.json").read_text())["waves"][0]["receiver_cpu"][
        "limit_cores"]
    verdicts = []
    with stack_runner(target=server.address, meter_url=server.meter.http) as runner:
        for ratio, share in design.held_out:
            capacity = (limit - max(model.fit.idle_cores, 0.0)) / model.fit.cost_ms(ratio) * 1000
            rate = round(capacity * share)
            # Three waves, their medians: three in a row cost Postfix 2.44, 2.55 and 2.92 ms a
            # message on a machine whose speed moves (docs/results.md, stop 45).
            waves = [held_out_wave(server, runner, ratio, rate, model, limit) for _ in range(3)]
            error = statistics.median(wave.cpu_error for wave in waves)
            load = statistics.median(wave.predicted_load for wave in waves)
            measured_p99 = statistics.median(wave.point.session_p99_ms for wave in waves)
            predicted_p99 = model.latency.predict(load, ratio) or float("nan")  # past 95%
            bounds = model.latency.predict_range(load, ratio)
            low, high = bounds or (0.0, None)
            verdict = p99_verdict(bounds, SLO_P99_MS)
            print(f"{name} held out {ratio:.0%} STARTTLS at {rate}/s ({share:.0%} of its "
                  f"capacity {capacity:.0f}/s): CPU per message predicted "
                  + ", ".join(f"{wave.predicted_ms:.3f} ms, cgroup {wave.truth_ms:.3f} ms "
                              f"(meter {wave.point.cpu_ms_per_message:.3f})" for wave in waves)
                  + f": median error {error:+.1%}; p99 predicted {predicted_p99:.1f} ms "
                  f"({low:.1f}-{high or float('inf'):.1f}) at {load:.0%} busy, measured "
                  f"{measured_p99} ms (objective {SLO_P99_MS:g}: verdict {verdict})")
            assert all(wave.point.failed == 0 and not wave.point.generator_limited
                       for wave in waves), waves
            assert abs(error) <= 0.15
            if verdict is not None:
                verdicts.append(verdict)
                assert verdict == (measured_p99 <= SLO_P99_MS)
    assert verdicts, "no held-out wave far enough from the objective for a verdict"


def test_the_collector_reports_and_plans_a_metered_server(postfix, start_collector,
                                                          start_sender, tmp_path):
    """Spans from the sender and the meter's samples, over OTLP: the collector lists the
    server, gives its CPU per message and per mode, and plans from its waves exactly as
    `tlsstorm plan` does from the same waves exported as a sweep."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from tests.helpers import Running
    from tlsstorm.common.config import MeterSettings
    from tlsstorm.common.telemetry import tracer_provider
    from tlsstorm.meter.service import MeterService

    collector = start_collector()
    endpoint = f"{collector.http}/v1/traces"
    meter = Running(MeterService(MeterSettings(
        target=postfix.address, http_port=0, interval_s=0.5,
        pid_file=Path("/var/spool/tlsstorm-postfix-test/pid/master.pid")),
        tracer_provider("tlsstorm-meter", exporter=OTLPSpanExporter(endpoint=endpoint))))
    try:
        sender = start_sender(postfix.port, provider=tracer_provider(
            "tlsstorm-sender", exporter=OTLPSpanExporter(endpoint=endpoint)))
        for ratio in (0.0, 0.5, 1.0):  # back to back: each costed over its steady seconds
            _wave(sender.http, postfix.address, ratio, 80, 5)
        time.sleep(3)  # the meter's samples of the last wave's seconds
    finally:
        meter.stop()

    targets = httpx.get(f"{collector.http}/v1/targets").json()["targets"]
    assert {"target": postfix.address, "metered": True, "receiver": False,
            "waves": 3} in targets
    costs = httpx.get(f"{collector.http}/v1/targets/summary",
                      params={"target": postfix.address}).json()
    assert costs["process"]["cpu_ms_per_message"] > 0
    assert costs["per_mode"]["starttls_ms"] > costs["per_mode"]["plain_ms"] > 0
    page = httpx.get(f"{collector.http}/", params={"target": postfix.address})
    assert page.status_code == 200 and "STARTTLS" in page.text and "meter" in page.text

    query = {"target": postfix.address, "peak_rate": 200, "tls_trajectory": "0.2,0.7"}
    plan = httpx.get(f"{collector.http}/v1/plan", params=query)
    assert plan.status_code == 200, plan.text
    (tmp_path / "sweep.json").write_text(httpx.get(
        f"{collector.http}/v1/sweep", params={"target": postfix.address}).text)
    cli = json.loads(subprocess.run(
        [sys.executable, "-m", "tlsstorm", "plan", "--sweep", str(tmp_path / "sweep.json"),
         "--peak-rate", "200", "--tls-trajectory", "0.2,0.7", "--json"],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    assert plan.json()["rows"] == cli["rows"]
    assert plan.json()["model"]["server"] == f"the server at {postfix.address}"

    unknown = httpx.get(f"{collector.http}/v1/plan", params={**query, "target": "10.9.9.9:25"})
    assert unknown.status_code == 409 and "no wave aimed at 10.9.9.9:25" in \
        unknown.json()["detail"]


def _sweep_refuses(target: str, meter_url: str, message: str) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "tlsstorm", "sweep", "--target", target, "--meter", meter_url,
         "--ratios", "0", "1", "--rate", "40", "--messages", "60", "--output",
         tempfile.mkdtemp()],
        capture_output=True, text=True, timeout=180,
        env=clean_env(**{name: str(free_port()) for name in (
            "TLSSTORM_RECEIVER_SMTP_PORT", "TLSSTORM_RECEIVER_HTTP_PORT",
            "TLSSTORM_SENDER_HTTP_PORT", "TLSSTORM_COLLECTOR_HTTP_PORT")},
            TLSSTORM_COLLECTOR_DB_PATH=f"{tempfile.mkdtemp()}/collector.sqlite"))
    assert finished.returncode != 0
    assert message in finished.stderr, finished.stdout[-2000:] + finished.stderr[-2000:]
    assert "Traceback" not in finished.stderr


def test_a_sweep_says_what_is_wrong_with_the_target_or_its_meter(postfix):
    """An unreachable server, a meter that watches nothing, a server without STARTTLS, and a
    meter on processes the load never reaches: one sentence each, and no plan."""
    closed = f"127.0.0.1:{free_port()}"
    _sweep_refuses(closed, postfix.meter.http, f"{closed} did not take a plain message")

    blind = subprocess.Popen(
        [sys.executable, "-m", "tlsstorm", "meter", "--target", postfix.address, "--pid-file",
         "/nonexistent/master.pid", "--http-port", str(port := free_port())], env=clean_env())
    refusing = ReceiverProcess(clean_env(TLSSTORM_RECEIVER_REFUSE_STARTTLS_FROM="127.0.0.0/8"))
    idle = subprocess.Popen(["sleep", "600"])
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 503
        _sweep_refuses(postfix.address, f"http://127.0.0.1:{port}", "measures nothing")

        receiver = f"127.0.0.1:{refusing.smtp_port}"
        watching_it = _meter("receiver", receiver, pid=str(refusing.pid))
        watching_sleep = _meter("receiver", receiver, pid=str(idle.pid))
        try:
            _sweep_refuses(receiver, watching_it.http, f"{receiver} refuses STARTTLS")
            _sweep_refuses(postfix.address, watching_sleep.http,
                           "the meter's CPU does not follow the load")
        finally:
            watching_it.stop()
            watching_sleep.stop()
    finally:
        blind.terminate()
        refusing.stop()
        idle.kill()


def test_locust_ui_aims_waves_at_postfix_from_its_list_and_the_collector_splits_its_cost(
    browser_page, tmp_path
):
    """`tlsstorm up --target postfix`: Locust's web UI lists the receiver and Postfix; two runs
    aimed at Postfix from the list (70% then 20% STARTTLS) reach Postfix, not the receiver, and
    the collector gives Postfix's CPU per message per mode from its meter."""
    ports = {name: str(free_port()) for name in (
        "TLSSTORM_RECEIVER_SMTP_PORT", "TLSSTORM_RECEIVER_HTTP_PORT", "TLSSTORM_SENDER_HTTP_PORT",
        "TLSSTORM_COLLECTOR_HTTP_PORT", "TLSSTORM_LOCUST_WEB_PORT", "TLSSTORM_TARGET_SMTP_PORT",
        "TLSSTORM_METER_HTTP_PORT")}
    env = clean_env(**ports, TLSSTORM_COLLECTOR_DB_PATH=str(tmp_path / "collector.sqlite"))
    up = subprocess.Popen([sys.executable, "-m", "tlsstorm", "up", "--no-jaeger", "--target",
                           "postfix"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    collector = f"http://127.0.0.1:{ports['TLSSTORM_COLLECTOR_HTTP_PORT']}"
    locust = f"http://127.0.0.1:{ports['TLSSTORM_LOCUST_WEB_PORT']}"
    postfix_address = f"127.0.0.1:{ports['TLSSTORM_TARGET_SMTP_PORT']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(locust).status_code == 200:
                    break
            assert up.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)
        page = browser_page
        page.goto(locust)
        page.get_by_role("button", name="Custom parameters").click()
        options = page.locator('select[name="target"] option').all_inner_texts()
        assert options == ["receiver", "postfix"]
        # A first run starts Postfix's daemons (smtpd, cleanup, TLS set-up): not measured.
        for number, (ratio, wave) in enumerate((("0.5", "warm-up"), ("0.7", "postfix-0.7"),
                                                ("0.2", "postfix-0.2"))):
            if number:
                page.get_by_role("button", name="New").click()
            only_user_class(page, "SpamViaSender")
            if number == 1:
                measured_since = int(time.time())
            start_from_ui(page, {"target": "postfix", "tlsRatio": ratio, "waveId": wave,
                                 "userCount": "4", "spawnRate": "4"})
            deadline = time.monotonic() + 60
            while _sent(collector, wave) < 400:
                assert time.monotonic() < deadline
                time.sleep(1)
            assert httpx.post(f"{locust}/stop", timeout=60).status_code == 200
            time.sleep(3)  # the meter's samples of the last seconds
        waves = httpx.get(f"{collector}/v1/waves", params={"target": postfix_address}).json()
        assert {"postfix-0.7", "postfix-0.2"} <= {entry["wave"] for entry in waves["waves"]}
        assert all(entry["plain"] == entry["starttls"] == 0 for entry in waves["waves"])
        costs = httpx.get(f"{collector}/v1/targets/summary", params={
            "target": postfix_address, "since": measured_since}).json()
        print(f"postfix through Locust's UI: {costs['per_mode']}")
        assert costs["per_mode"]["starttls_ms"] > costs["per_mode"]["plain_ms"] > 0
    finally:
        os.killpg(up.pid, signal.SIGINT)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output[-3000:]


def _sent(collector: str, wave: str) -> int:
    found = [entry for entry in httpx.get(f"{collector}/v1/waves").json()["waves"]
             if entry["wave"] == wave]
    return sum(found[0]["sent"].values()) if found else 0
