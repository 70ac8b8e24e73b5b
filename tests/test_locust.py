"""Locust as command and control: options, shapes, distributed runs and traces, for real."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.locust_helpers import clean_env, finish, free_port, locust, smtp_rows
from tlsstorm.common.telemetry import tracer_provider


def _ticks(name: str, times: list[float], **options) -> list[dict]:
    """Run load/shapes.py's shape in its own process (importing Locust patches the interpreter)."""
    finished = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "shape_ticks.py"), name,
         json.dumps(options), *map(str, times)],
        capture_output=True, text=True, timeout=60, check=True)
    return json.loads(finished.stdout)


def test_constant_shape_follows_the_ui_fields_until_the_run_time():
    ticks = _ticks("constant", [0, 10, 29.9, 30], num_users=12, spawn_rate=4, run_time=30)

    assert [tick["tick"] for tick in ticks] == [[12, 4]] * 3 + [None]


def test_spam_waves_burst_and_fall_silent_each_period():
    ticks = _ticks("waves", [0, 3.9, 4, 9.9, 10, 13.9, 14], num_users=50, spawn_rate=25,
                   wave_period=10, wave_burst=4)

    assert [tick["tick"][0] for tick in ticks] == [50, 50, 0, 0, 50, 50, 0]


def test_rustock_timeline_raises_the_tls_ratio_per_phase_then_stops():
    ticks = _ticks("rustock", [0, 4.9, 5, 9.9, 10, 14.9, 15], phase_seconds=5, wave_id="rk")

    assert [tick["tick"] for tick in ticks] == [[10, 5]] * 6 + [None]
    assert [(tick["tls_ratio"], tick["wave_id"]) for tick in ticks[:6]] == [
        (0.2, "rk-phase1-tls20")] * 2 + [(0.3, "rk-phase2-tls30")] * 2 + [
        (0.7, "rk-phase3-tls70")] * 2


def _share(stats: dict) -> tuple[int, float]:
    total = stats["plain"]["messages"] + stats["tls"]["messages"]
    return total, (stats["tls"]["messages"] / total if total else 0.0)


def test_rustock_ratio_change_reaches_running_users(receiver, sender, tmp_path):
    run = locust("SpamViaSender", "--headless", "--users", "4", "--spawn-rate", "4",
                 "--phase-seconds", "3", "--wave-id", "rk", "--stop-timeout", "10",
                 "--host", sender.http, "--only-summary",
                 env=clean_env(TLSSTORM_LOAD_SHAPE="rustock"))
    output = finish(run, timeout=90)

    assert run.returncode == 0, output[-3000:]
    for phase, ratio in ((1, 0.2), (2, 0.3), (3, 0.7)):
        total, share = _share(receiver.stats(f"rk-phase{phase}-tls{round(ratio * 100)}"))
        assert total >= 20, (phase, total)
        assert share == pytest.approx(ratio, abs=0.1), (phase, share)


def test_max_messages_sends_exactly_that_many_at_the_exact_ratio(receiver, sender, tmp_path):
    stats_file = tmp_path / "stats.json"
    run = locust("SpamViaSender", "--headless", "--users", "5", "--spawn-rate", "5",
                 "--max-messages", "40", "--tls-ratio", "0.25", "--wave-id", "budget",
                 "--run-time", "60s", "--stop-timeout", "10", "--host", sender.http,
                 "--json-file", str(stats_file.with_suffix("")), "--only-summary")
    output = finish(run)

    assert run.returncode == 0, output[-3000:]
    rows = smtp_rows(stats_file)
    assert rows["SMTP STARTTLS"]["num_requests"] == 10
    assert rows["SMTP plain"]["num_requests"] == 30
    stats = receiver.stats("budget")
    assert (stats["tls"]["messages"], stats["plain"]["messages"]) == (10, 30)


def test_direct_smtp_bot_speaks_to_the_receiver_without_the_sender(receiver, tmp_path):
    stats_file = tmp_path / "direct.json"
    run = locust("DirectSmtpBot", "--headless", "--users", "2", "--spawn-rate", "2",
                 "--max-messages", "20", "--tls-ratio", "0.5", "--wave-id", "direct",
                 "--smtp-target", f"127.0.0.1:{receiver.smtp_port}", "--run-time", "60s",
                 "--stop-timeout", "10", "--json-file", str(stats_file.with_suffix("")),
                 "--only-summary")
    output = finish(run)

    assert run.returncode == 0, output[-3000:]
    rows = smtp_rows(stats_file)
    assert rows["SMTP STARTTLS (direct)"]["num_requests"] == 10
    assert rows["SMTP plain (direct)"]["num_failures"] == 0
    stats = receiver.stats("direct")
    assert (stats["tls"]["messages"], stats["plain"]["messages"]) == (10, 10)


def test_direct_smtp_bot_is_held_to_the_allowlist(receiver, tmp_path):
    run = locust("DirectSmtpBot", "--headless", "--users", "1", "--spawn-rate", "1",
                 "--smtp-target", f"127.0.0.1:{receiver.smtp_port}", "--run-time", "3s",
                 "--only-summary",
                 env=clean_env(TLSSTORM_ALLOWED_TARGETS="127.0.0.1:1"))
    output = finish(run)

    assert "not allowed" in output
    assert receiver.stats()["plain"]["sessions"] + receiver.stats()["tls"]["sessions"] == 0


def test_locust_cannot_aim_the_sender_outside_its_allowlist(receiver, sender, tmp_path):
    stats_file = tmp_path / "refused.json"
    run = locust("SpamViaSender", "--headless", "--users", "2", "--spawn-rate", "2",
                 "--max-messages", "10", "--target", "192.0.2.1:25", "--run-time", "30s",
                 "--host", sender.http, "--json-file", str(stats_file.with_suffix("")),
                 "--only-summary")
    finish(run)

    rows = {row["name"]: row for row in json.loads(stats_file.read_text())}
    assert rows["POST /v1/send"]["num_requests"] == rows["POST /v1/send"]["num_failures"] > 0
    assert not smtp_rows(stats_file)  # no message was sent
    assert receiver.stats()["plain"]["sessions"] + receiver.stats()["tls"]["sessions"] == 0


def test_distributed_master_and_workers_agree_with_the_receiver(receiver, sender, tmp_path):
    port = str(free_port())
    stats_file = tmp_path / "distributed.json"
    master = locust("SpamViaSender", "--master", "--master-bind-port", port, "--headless",
                    "--expect-workers", "2", "--users", "6", "--spawn-rate", "6",
                    "--run-time", "5s", "--stop-timeout", "10", "--tls-ratio", "0.7",
                    "--wave-id", "dist", "--host", sender.http,
                    "--json-file", str(stats_file.with_suffix("")), "--only-summary")
    workers = [locust("--worker", "--master-port", port) for _ in range(2)]
    output = finish(master)
    for worker in workers:
        finish(worker, timeout=30)

    assert master.returncode == 0, output[-3000:]
    rows = smtp_rows(stats_file)
    sent = sum(row["num_requests"] for row in rows.values())
    assert all(row["num_failures"] == 0 for row in rows.values())
    stats = receiver.stats("dist")
    total, share = _share(stats)
    assert total == sent > 20
    # Workers started with the default 0.3: 0.7 reached them from the master.
    assert share == pytest.approx(0.7, abs=0.1)


class _OtlpCapture(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).requests.append(ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_one_trace_spans_locust_the_sender_and_the_receiver(start_receiver, start_sender):
    _OtlpCapture.requests = []
    capture = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpCapture)
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{capture.server_port}"
    receiver = start_receiver(provider=tracer_provider(
        "tlsstorm-receiver", exporter=OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    sender = start_sender(receiver.smtp_port, provider=tracer_provider(
        "tlsstorm-sender", exporter=OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))

    run = locust("SpamViaSender", "--headless", "--otel", "--users", "1", "--spawn-rate", "1",
                 "--max-messages", "3", "--tls-ratio", "1", "--run-time", "60s",
                 "--host", sender.http, "--only-summary",
                 env=clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="locust",
                               OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                               OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
                               OTEL_BSP_SCHEDULE_DELAY="200"))
    output = finish(run)
    assert run.returncode == 0, output[-3000:]
    receiver.wait_sessions(3)
    receiver.service.provider.force_flush()
    sender.service.provider.force_flush()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spans = {}
        for request in _OtlpCapture.requests:
            for resource_spans in request.resource_spans:
                service = next(kv.value.string_value for kv in resource_spans.resource.attributes
                               if kv.key == "service.name")
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        spans[span.span_id] = (service, span)
        sessions = [span for service, span in spans.values() if span.name == "smtp.session"]
        if len(sessions) == 3 and any(s == "locust" for s, _ in spans.values()):
            break
        time.sleep(0.2)
    capture.shutdown()

    assert len(sessions) == 3
    for session in sessions:
        chain, current = [], session
        while current.parent_span_id in spans:
            service, current = spans[current.parent_span_id]
            chain.append((service, current.name))
        assert chain[-1][0] == "locust", chain
        assert ("tlsstorm-sender", "smtp.send") in chain
