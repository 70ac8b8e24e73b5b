"""schemathesis against each service's own OpenAPI schema: no 5xx, no unhandled exception."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.locust_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
SCHEMATHESIS = ROOT / ".venv" / "bin" / "schemathesis"


def _fuzz(base_url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCHEMATHESIS), "run", f"{base_url}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "40", "--generation-deterministic", "--workers", "1", *extra],
        capture_output=True, text=True, timeout=600)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: generated sends fail fast and reach no one."""
    return free_port()


def test_receiver_api_has_no_server_errors(receiver):
    finished = _fuzz(receiver.http)

    assert finished.returncode == 0, finished.stdout[-6000:]


def test_sender_api_has_no_server_errors(start_sender, closed_port):
    sender = start_sender(closed_port, timeout_s=1)

    finished = _fuzz(sender.http)

    assert finished.returncode == 0, finished.stdout[-6000:]


def test_collector_api_has_no_server_errors(start_collector):
    collector = start_collector()

    finished = _fuzz(collector.http)

    assert finished.returncode == 0, finished.stdout[-6000:]
