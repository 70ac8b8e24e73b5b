"""A real MTA as the target: scripts/postfix-sink.sh runs Postfix with STARTTLS on a loopback
port, and the sender aims at it like at the receiver."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.locust_helpers import free_port
from tlsstorm.common.tls import self_signed

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    (not shutil.which("postfix") or os.geteuid() != 0) and os.environ.get("CI") != "true",
    reason="Debian's postfix and root are needed (make system-deps installs postfix)")


@pytest.fixture
def postfix_port(tmp_path):
    pair = self_signed("postfix.tlsstorm.test", "ecdsa-p256")
    (tmp_path / "cert.pem").write_bytes(pair.cert_pem)
    (tmp_path / "key.pem").write_bytes(pair.key_pem)
    port = free_port()
    started = subprocess.run(
        ["bash", str(ROOT / "scripts/postfix-sink.sh"), "start", str(port),
         str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")],
        capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    yield port
    subprocess.run(["bash", str(ROOT / "scripts/postfix-sink.sh"), "stop"], timeout=60)


def test_sender_delivers_plain_and_starttls_mail_to_postfix(start_sender, postfix_port):
    sender = start_sender(postfix_port)

    results = [httpx.post(f"{sender.http}/v1/send", json={"tls": tls}, timeout=60).json()
               ["results"][0] for tls in (False, True)]

    assert [r["ok"] for r in results] == [True, True], results
    assert [r["code"] for r in results] == [250, 250]
    assert results[0]["tls_version"] is None
    assert results[1]["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert results[1]["bytes_received"] > results[0]["bytes_received"] + 300  # its certificate


def _tls_wave_mean_ms(sender, count: int) -> float:
    accepted = httpx.post(f"{sender.http}/v1/waves", json={
        "rate": 20, "count": count, "tls_ratio": 1.0, "concurrency": 16}).json()
    while (wave := httpx.get(f"{sender.http}/v1/waves/{accepted['id']}").json())[
            "status"] == "running":
        time.sleep(0.2)
    assert wave["tls"]["ok"] == count, wave
    return wave["tls"]["total_ms"]["mean"]


def test_quick_acks_spare_starttls_sessions_the_delayed_ack_stall(start_sender, postfix_port):
    """Postfix sends TLS 1.3 session tickets and its next reply as separate segments; a client
    that delays its ACK for the first makes the second wait ~40 ms (Nagle) in many sessions."""
    delayed = _tls_wave_mean_ms(start_sender(postfix_port), 40)
    quick = _tls_wave_mean_ms(start_sender(postfix_port, quick_ack=True), 40)

    assert delayed > quick + 5, (delayed, quick)
    assert quick < 12, quick
