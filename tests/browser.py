"""A real browser for the web UIs' tests: Debian's chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-quic", "--disable-dev-shm-usage"]


@pytest.fixture
def browser_page(tmp_path) -> Iterator:
    from playwright.sync_api import sync_playwright

    # Chromium's crash reports and caches in the test's folder, not the user's ~/.config.
    home = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS,
                                             env={**os.environ, **home})
        yield browser.new_page(viewport={"width": 1280, "height": 1400})
        browser.close()
