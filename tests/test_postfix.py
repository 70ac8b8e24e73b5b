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

from tests.helpers import postfix_instance_left, tcp_packets
from tests.locust_helpers import free_port
from tlsstorm.common.pki import self_signed

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
    # Nothing of the instance outlives it on the host: the next run starts as on a fresh one.
    assert not postfix_instance_left("tlsstorm-postfix")


def test_sender_delivers_plain_and_starttls_mail_to_postfix(start_sender, postfix_port):
    sender = start_sender(postfix_port)

    results = [httpx.post(f"{sender.http}/v1/send", json={"tls": tls}, timeout=60).json()
               ["results"][0] for tls in (False, True)]

    assert [r["ok"] for r in results] == [True, True], results
    assert [r["code"] for r in results] == [250, 250]
    assert results[0]["tls_version"] is None
    assert results[1]["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert results[1]["bytes_received"] > results[0]["bytes_received"] + 300  # its certificate


_TCP_ACK = 0x10


def _longest_ack_delay_s(pcap: Path, server_port: int) -> float:
    """The longest the client took to acknowledge a segment of data from the server."""
    waiting: dict[int, list[tuple[float, int]]] = {}  # client port -> (sent at, end seq)
    longest = 0.0
    for packet in tcp_packets(pcap):
        if packet.source_port == server_port and packet.payload:
            waiting.setdefault(packet.destination_port, []).append(
                (packet.seconds, (packet.seq + packet.payload) % 2**32))
        elif packet.destination_port == server_port and packet.flags & _TCP_ACK:
            still = []
            for sent_at, end in waiting.get(packet.source_port, []):
                if (packet.ack - end) % 2**32 < 2**31:  # acknowledged (sequence numbers wrap)
                    longest = max(longest, packet.seconds - sent_at)
                else:
                    still.append((sent_at, end))
            waiting[packet.source_port] = still
    return longest


def _longest_stall(start_sender, postfix_port: int, pcap: Path, quick_ack: bool, rate: float,
                  count: int) -> float:
    """A STARTTLS wave at Postfix under a capture: the longest delayed ACK it shows."""
    capture = subprocess.Popen(
        [shutil.which("tcpdump") or "tcpdump", "-i", "lo", "-U", "--immediate-mode", "-w",
         str(pcap), "-s", "96", f"tcp port {postfix_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # tcpdump is listening
    sender = start_sender(postfix_port, quick_ack=quick_ack)
    accepted = httpx.post(f"{sender.http}/v1/waves", json={
        "rate": rate, "count": count, "tls_ratio": 1.0, "concurrency": 16}).json()
    while (wave := httpx.get(f"{sender.http}/v1/waves/{accepted['id']}").json())[
            "status"] == "running":
        time.sleep(0.2)
    time.sleep(0.5)
    capture.terminate()
    capture.wait(10)
    assert wave["tls"]["ok"] == count, wave
    return _longest_ack_delay_s(pcap, postfix_port)


@pytest.mark.skipif(not shutil.which("tcpdump") and os.environ.get("CI") != "true",
                    reason="tcpdump is not installed (make system-deps installs it)")
def test_quick_acks_spare_starttls_sessions_the_delayed_ack_stall(
        start_sender, postfix_port, tmp_path):
    """Postfix sends TLS 1.3 session tickets and its next reply as separate segments; a client
    that delays its ACK for the first makes the second wait ~40 ms (Nagle). With quick ACKs
    the kernel acknowledges every segment as it arrives, however busy the machine. Without
    them, sessions one at a time on a quiet machine show the stall (42-45 ms here; under load
    it may not appear: it depends on timing, the quick ACK does not)."""
    without = _longest_stall(start_sender, postfix_port, tmp_path / "delayed.pcap",
                             quick_ack=False, rate=4, count=8)
    with_quick = _longest_stall(start_sender, postfix_port, tmp_path / "quick.pcap",
                                quick_ack=True, rate=20, count=40)

    print(f"longest delayed ACK: {without * 1000:.1f} ms without quick ACKs, "
          f"{with_quick * 1000:.1f} ms with them")
    assert without >= 0.030  # the stall is there to be spared
    assert with_quick < 0.020  # 3-6 ms at most here
