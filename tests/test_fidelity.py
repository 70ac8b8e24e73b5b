"""Fidelity: the receiver's wire bytes agree with a packet capture, and the two ends' handshake
timings nest as a network round trip says they must."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.helpers import tcp_packets
from tlsstorm.common.telemetry import tracer_provider

TCPDUMP = shutil.which("tcpdump")


def _payload_bytes(pcap: Path, server_port: int) -> tuple[int, int]:
    """(to server, from server) TCP payload bytes in a pcap of the loopback interface."""
    to_server = from_server = 0
    for packet in tcp_packets(pcap):
        if packet.destination_port == server_port:
            to_server += packet.payload
        elif packet.source_port == server_port:
            from_server += packet.payload
    return to_server, from_server


@pytest.mark.skipif(not TCPDUMP and os.environ.get("CI") != "true",
                    reason="tcpdump is not installed (make system-deps installs it)")
def test_wire_bytes_agree_with_a_packet_capture_within_two_percent(sender, receiver, tmp_path):
    pcap = tmp_path / "smtp.pcap"
    capture = subprocess.Popen(
        [TCPDUMP or "tcpdump", "-i", "lo", "-U", "--immediate-mode", "-w", str(pcap), "-s", "128",
         f"tcp port {receiver.smtp_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # tcpdump is listening
    for tls in (False, True, True, False):
        response = httpx.post(f"{sender.http}/v1/send", json={"tls": tls, "count": 2},
                              timeout=30)
        assert response.status_code == 200
    stats = receiver.wait_sessions(4)
    time.sleep(0.5)
    capture.terminate()
    capture.wait(10)

    to_server, from_server = _payload_bytes(pcap, receiver.smtp_port)
    counted_in = stats["plain"]["wire_bytes_in"] + stats["tls"]["wire_bytes_in"]
    counted_out = stats["plain"]["wire_bytes_out"] + stats["tls"]["wire_bytes_out"]
    assert to_server > 0 and from_server > 0
    assert counted_in == pytest.approx(to_server, rel=0.02)
    assert counted_out == pytest.approx(from_server, rel=0.02)


def test_client_and_server_handshake_times_agree(
    start_receiver, start_sender
):
    exporter = InMemorySpanExporter()
    receiver = start_receiver(provider=tracer_provider("tlsstorm-receiver", exporter=exporter))
    sender = start_sender(receiver.smtp_port,
                          provider=tracer_provider("tlsstorm-sender", exporter=exporter))
    httpx.post(f"{sender.http}/v1/send", json={"tls": True, "count": 5}, timeout=30)
    receiver.wait_sessions(5)
    receiver.service.provider.force_flush()
    sender.service.provider.force_flush()

    spans = {span.context.span_id: span for span in exporter.get_finished_spans()}
    by_message: dict[int, dict[str, object]] = {}  # smtp.send span id -> side -> handshake
    for span in spans.values():
        if span.name != "tls.handshake":
            continue
        parent = spans[span.parent.span_id]
        send_id = parent.parent.span_id if parent.name == "smtp.session" else parent.context.span_id
        by_message.setdefault(send_id, {})[span.attributes["tlsstorm.side"]] = span
    pairs = [(sides["client"], sides["server"]) for sides in by_message.values()
             if len(sides) == 2]

    assert len(pairs) == 5
    for client, server in pairs:
        # The server is done when the client's Finished arrives, so after the client wrote it;
        # the client reads its clock just after that write and may be descheduled in between
        # (seen in CI: the server's end 83 us earlier), hence the slack. A clock mapped wrongly
        # (monotonic read as wall time, the wrong start) is off by far more than a millisecond.
        assert server.end_time >= client.end_time - 1_000_000
        server_ns = server.end_time - server.start_time
        client_ns = client.end_time - client.start_time
        assert abs(server_ns - client_ns) < 5_000_000
