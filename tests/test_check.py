"""`tlsstorm check` (the chart's `helm test`): it waits out a sender that refuses connections
for a while, as a fresh pod meets behind a NetworkPolicy enforcer, and fails clearly if the
sender never answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from tests.locust_helpers import free_port
from tlsstorm.common.telemetry import tracer_provider


def _check(sender_port: int, collector_url: str, timeout_s: float) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TLSSTORM_")}
    return subprocess.Popen(
        [sys.executable, "-m", "tlsstorm", "check", "--sender-url",
         f"http://127.0.0.1:{sender_port}", "--collector-url", collector_url,
         "--timeout", str(timeout_s)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_check_waits_for_a_sender_that_starts_refusing_and_then_passes(
        start_collector, start_receiver, start_sender):
    collector = start_collector()
    endpoint = f"{collector.http}/v1/traces"
    receiver = start_receiver(provider=tracer_provider(
        "tlsstorm-receiver", exporter=OTLPSpanExporter(endpoint=endpoint)))
    sender_port = free_port()
    check = _check(sender_port, collector.http, timeout_s=60)
    time.sleep(3)  # the check meets "connection refused" for these seconds
    assert check.poll() is None, check.communicate()[0]
    start_sender(receiver.smtp_port, http_port=sender_port, provider=tracer_provider(
        "tlsstorm-sender", exporter=OTLPSpanExporter(endpoint=endpoint)))
    output = check.communicate(timeout=90)[0]

    assert check.returncode == 0, output
    assert f"waiting for http://127.0.0.1:{sender_port}/v1/send to accept connections" in output
    assert "sent one plain message: 250" in output
    assert "sent one STARTTLS message: 250" in output
    assert "OK: the collector holds both sessions" in output
    stats = receiver.stats()
    assert (stats["plain"]["sessions"], stats["tls"]["sessions"]) == (1, 1)


def test_a_sender_that_never_answers_fails_the_check_at_its_timeout_without_a_traceback(
        start_collector):
    collector = start_collector()
    started = time.monotonic()
    check = _check(free_port(), collector.http, timeout_s=3)
    output = check.communicate(timeout=60)[0]

    assert check.returncode == 1, output
    assert "FAIL: after 3 s the sender at http://127.0.0.1:" in output
    assert "still refuses connections" in output
    assert "Traceback" not in output
    assert 3 <= time.monotonic() - started < 30
