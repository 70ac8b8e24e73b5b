"""The Locust web UI in a real browser: set the TLS ratio, swarm, and the receiver follows."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.locust_helpers import clean_env, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-quic", "--disable-dev-shm-usage"]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "locust-ui.png"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
    reason="Debian chromium is not installed (make system-deps installs it)")


@pytest.fixture
def stack(tmp_path):
    ports = {name: str(free_port()) for name in (
        "TLSSTORM_RECEIVER_SMTP_PORT", "TLSSTORM_RECEIVER_HTTP_PORT",
        "TLSSTORM_SENDER_HTTP_PORT", "TLSSTORM_COLLECTOR_HTTP_PORT", "TLSSTORM_LOCUST_WEB_PORT")}
    up = subprocess.Popen([sys.executable, "-m", "tlsstorm", "up"], env=clean_env(**ports),
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
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
    yield locust_url, f"http://127.0.0.1:{ports['TLSSTORM_RECEIVER_HTTP_PORT']}"
    up.send_signal(signal.SIGINT)
    up.communicate(timeout=60)


def test_tls_ratio_set_in_the_ui_reaches_the_receiver(stack, tmp_path):
    from playwright.sync_api import sync_playwright

    locust_url, receiver_url = stack
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(locust_url)
        page.get_by_role("button", name="Custom parameters").click()
        page.fill('input[name="tlsRatio"]', "0.7")
        page.fill('input[name="waveId"]', "browser")
        page.fill('input[name="userCount"]', "6")
        page.fill('input[name="spawnRate"]', "6")
        # TLSSTORM_UPDATE_SCREENSHOTS=1 refreshes the one in docs/.
        screenshot = DOCS_SCREENSHOT if os.environ.get("TLSSTORM_UPDATE_SCREENSHOTS") == "1" \
            else tmp_path / "locust-ui.png"
        page.screenshot(path=str(screenshot), full_page=True)
        page.get_by_role("button", name="Start").click()

        deadline = time.monotonic() + 90
        while True:
            response = httpx.get(f"{receiver_url}/v1/stats", params={"wave": "browser"})
            stats = response.json() if response.status_code == 200 else None
            total = stats["plain"]["sessions"] + stats["tls"]["sessions"] if stats else 0
            if total >= 100:
                break
            assert time.monotonic() < deadline, f"only {total} sessions"
            time.sleep(0.5)
        assert "running" in page.content()
        assert httpx.post(f"{locust_url}/stop", timeout=60).status_code == 200
        browser.close()

    time.sleep(1)
    stats = httpx.get(f"{receiver_url}/v1/stats", params={"wave": "browser"}).json()
    total = stats["plain"]["sessions"] + stats["tls"]["sessions"]
    assert total >= 100
    assert stats["tls"]["sessions"] / total == pytest.approx(0.7, abs=0.1)
    assert stats["tls"]["handshakes_ok"] == stats["tls"]["sessions"]
