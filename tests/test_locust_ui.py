"""The Locust web UI in a real browser: set the TLS ratio, swarm, and the receiver follows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.browser import CHROMIUM
from tests.locust_helpers import assert_no_errors, clean_env, finish, free_port, locust
from tests.locust_ui_helpers import receiver_wave, start_from_ui, wave_modes, wave_sessions

DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "locust-ui.png"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
    reason="Debian chromium is not installed (make system-deps installs it)")


@pytest.fixture
def start_stack(tmp_path):
    """`tlsstorm up` on free ports; its log (Locust's included) must hold no error at the end."""
    started: list[subprocess.Popen] = []

    def start(**env: str) -> tuple[str, str]:
        """`env` over free ports (a port given there is the service's)."""
        ports = {name: str(free_port()) for name in (
            "TLSSTORM_RECEIVER_SMTP_PORT", "TLSSTORM_RECEIVER_HTTP_PORT",
            "TLSSTORM_SENDER_HTTP_PORT", "TLSSTORM_COLLECTOR_HTTP_PORT",
            "TLSSTORM_LOCUST_WEB_PORT")}
        up = subprocess.Popen([sys.executable, "-m", "tlsstorm", "up", "--no-jaeger"],
                              env=clean_env(**{**ports, **env}), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(up)
        ports.update(env)
        locust_url = f"http://127.0.0.1:{ports['TLSSTORM_LOCUST_WEB_PORT']}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(locust_url).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert up.poll() is None and time.monotonic() < deadline, up.stdout.read()
            time.sleep(0.3)
        return locust_url, f"http://127.0.0.1:{ports['TLSSTORM_RECEIVER_HTTP_PORT']}"

    yield start
    for up in started:
        up.send_signal(signal.SIGINT)
        log, _ = up.communicate(timeout=60)
        assert_no_errors(log)


def _wait_for_sessions(receiver_url: str, wave: str, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while (seen := wave_sessions(receiver_wave(receiver_url, wave))) < count:
        assert time.monotonic() < deadline, f"only {seen} sessions of {wave}"
        time.sleep(0.3)


def _wait_until_stopped(page, locust_url: str, timeout: float = 60) -> None:
    """Until Locust's state is stopped (it ends itself, or after POST /stop); New shows then."""
    deadline = time.monotonic() + timeout
    while httpx.get(f"{locust_url}/stats/requests").json()["state"] != "stopped":
        assert time.monotonic() < deadline, "the run did not stop"
        time.sleep(0.3)
    page.get_by_role("button", name="New").wait_for(timeout=10_000)


def test_two_ui_runs_in_a_row_make_two_separate_waves(start_stack, browser_page, tmp_path):
    locust_url, receiver_url = start_stack()
    page = browser_page
    page.goto(locust_url)
    # TLSSTORM_UPDATE_SCREENSHOTS=1 refreshes the one in docs/.
    screenshot = DOCS_SCREENSHOT if os.environ.get("TLSSTORM_UPDATE_SCREENSHOTS") == "1" \
        else tmp_path / "locust-ui.png"
    page.get_by_role("button", name="Custom parameters").click()
    page.screenshot(path=str(screenshot), full_page=True)

    start_from_ui(page, {"tlsRatio": "0.7", "waveId": "ui-one", "userCount": "6", "spawnRate": "6"})
    _wait_for_sessions(receiver_url, "ui-one", 100)
    assert "running" in page.content()
    assert httpx.post(f"{locust_url}/stop", timeout=60).status_code == 200
    _wait_until_stopped(page, locust_url)
    time.sleep(1)
    first = receiver_wave(receiver_url, "ui-one")

    # The second run: another wave id, another ratio, and a message budget that ends it.
    page.get_by_role("button", name="New").click()
    start_from_ui(page, {"tlsRatio": "0.2", "waveId": "ui-two", "maxMessages": "50"})
    _wait_until_stopped(page, locust_url)
    time.sleep(1)

    assert wave_sessions(first) >= 100
    assert first["tls"]["sessions"] / wave_sessions(first) == pytest.approx(0.7, abs=0.1)
    assert first["tls"]["handshakes_ok"] == first["tls"]["sessions"]
    second = receiver_wave(receiver_url, "ui-two")
    assert (second["plain"]["messages"], second["tls"]["messages"]) == (40, 10)
    # Nothing of run 2 joined run 1.
    assert wave_modes(receiver_wave(receiver_url, "ui-one")) == wave_modes(first)


def test_rustock_preselected_restarts_from_its_first_phase(start_stack, browser_page):
    locust_url, receiver_url = start_stack(TLSSTORM_LOAD_SHAPE="rustock")
    page = browser_page
    page.goto(locust_url)
    assert page.locator('select[name="shapeClass"]').input_value() == "RustockTimeline"

    # Run 1 is stopped in its first phase ...
    start_from_ui(page, {"waveId": "ui-rk1", "phaseSeconds": "30", "userCount": "4",
                  "spawnRate": "4"})
    _wait_for_sessions(receiver_url, "ui-rk1-phase1-tls20", 20)
    assert httpx.post(f"{locust_url}/stop", timeout=60).status_code == 200
    _wait_until_stopped(page, locust_url)
    time.sleep(1)
    stopped_run = receiver_wave(receiver_url, "ui-rk1-phase1-tls20")

    # ... run 2 starts again from 20% under its own wave id, and the shape ends it.
    page.get_by_role("button", name="New").click()
    assert page.locator('select[name="shapeClass"]').input_value() == "RustockTimeline"
    start_from_ui(page, {"waveId": "ui-rk2", "phaseSeconds": "3"})
    _wait_until_stopped(page, locust_url)
    time.sleep(1)

    for phase, ratio in ((1, 0.2), (2, 0.3), (3, 0.7)):
        stats = receiver_wave(receiver_url, f"ui-rk2-phase{phase}-tls{round(ratio * 100)}")
        assert wave_sessions(stats) >= 20, (phase, stats)
        assert stats["tls"]["sessions"] / wave_sessions(stats) == pytest.approx(ratio, abs=0.05)
    assert wave_modes(receiver_wave(receiver_url, "ui-rk1-phase1-tls20")) == wave_modes(stopped_run)
    assert receiver_wave(receiver_url, "ui-rk1-phase2-tls30") is None


def test_distributed_rustock_from_the_ui_twice(receiver, sender, browser_page):
    """As the chart runs Locust: a master with the web UI and the class picker, two workers;
    the preselected Rustock timeline, started from the browser, twice in a row."""
    web_port, master_port = str(free_port()), str(free_port())
    env = clean_env(TLSSTORM_LOAD_SHAPE="rustock")
    master = locust("--master", "--master-bind-port", master_port, "--class-picker",
                    "--web-host", "127.0.0.1", "--web-port", web_port, "--host", sender.http,
                    "--users", "6", "--spawn-rate", "6", env=env)
    workers = [locust("--worker", "--master-port", master_port, env=env) for _ in range(2)]
    locust_url = f"http://127.0.0.1:{web_port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # the UI is up and both workers are in
            try:
                if len(httpx.get(f"{locust_url}/stats/requests").json()["workers"]) == 2:
                    break
            except (httpx.HTTPError, KeyError):
                pass
            assert time.monotonic() < deadline, "the master or its workers did not come up"
            time.sleep(0.3)
        page = browser_page
        page.goto(locust_url)
        for run in ("ui-d1", "ui-d2"):
            if run == "ui-d2":
                page.get_by_role("button", name="New").click()
            assert page.locator('select[name="shapeClass"]').input_value() == "RustockTimeline"
            start_from_ui(page, {"waveId": run, "phaseSeconds": "3"})
            _wait_until_stopped(page, locust_url)
            time.sleep(1)
            for phase, ratio in ((1, 0.2), (2, 0.3), (3, 0.7)):
                stats = receiver_wave(receiver.http, f"{run}-phase{phase}-tls{round(ratio * 100)}")
                assert wave_sessions(stats) >= 20, (run, phase, stats)
                share = stats["tls"]["sessions"] / wave_sessions(stats)
                assert share == pytest.approx(ratio, abs=0.05), (run, phase, share)
    finally:
        # As Kubernetes stops the master's pod (SIGINT may be ignored: a background job inherits
        # it so): the master tells its workers to quit.
        master.send_signal(signal.SIGTERM)
        for process in (master, *workers):
            finish(process, timeout=60)  # fails on an error in any of their logs


def test_sender_cpu_tab_shows_each_replica_against_its_limit(start_stack, browser_page):
    """Beside Locust's own CPU warning: the sender's CPU against its limit, in a tab: the
    replica by its name, its engine, the cores it uses while it sends, its limit, and "ok"
    (two users leave it far from busy)."""
    sender_port = free_port()
    locust_url, _ = start_stack(TLSSTORM_SENDER_HTTP_PORT=str(sender_port))
    instance = httpx.get(f"http://127.0.0.1:{sender_port}/v1/stats").json()["instance"]
    page = browser_page
    page.goto(locust_url)
    start_from_ui(page, {"userCount": "2", "spawnRate": "2", "maxMessages": "600"})
    page.get_by_role("tab", name="Sender CPU").click()
    row = page.get_by_role("row").filter(has_text=instance)
    row.first.wait_for(timeout=20_000)
    deadline = time.monotonic() + 20
    while True:  # the tab refreshes with Locust's stats; cores are the last second's
        sender, engine, cores, limit, _share, _throttled, state = row.first.locator(
            "td").all_inner_texts()
        if float(cores) > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    assert (sender, engine) == (instance, "native")
    assert float(cores) > 0, "no CPU shown while the sender sent"
    assert limit.endswith("(cpu affinity)")  # no quota here
    assert state == "ok"
    _wait_until_stopped(page, locust_url)
