"""Collector ingest throughput with real exporter batches; prints spans/s per core.

1. Runs the local stack (collector, receiver, sender) and a mixed wave; the collector forwards
   every batch it gets to a capture server here, so we hold the exporters' real protobuf bodies.
2. Measures receiver and sender CPU per message, and spans per message, to know what a
   saturated receiver + sender emit.
3. Replays the captured batches into a fresh collector pinned to one core and measures spans
   per second (wall) and per CPU-second.

Usage: python bench/collector_ingest.py [--messages 300] [--spans 200000]
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from fixtures import free_port
from tlsstorm.common.machine import machine_note
from tlsstorm.common.process import cpu_seconds_of

TARGET_SPANS_PER_CORE = 20_000


class _Capture(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []  # noqa: RUF012 (one capture per run)

    def do_POST(self):
        type(self).bodies.append(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _spans_in(body: bytes) -> int:
    request = ExportTraceServiceRequest.FromString(body)
    return sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)


def capture_wave(messages: int, workdir: Path) -> tuple[list[bytes], dict[str, float]]:
    capture = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    os.environ.update({
        "TLSSTORM_COLLECTOR_HTTP_PORT": str(free_port()),
        "TLSSTORM_RECEIVER_SMTP_PORT": str(free_port()),
        "TLSSTORM_RECEIVER_HTTP_PORT": str(free_port()),
        "TLSSTORM_SENDER_HTTP_PORT": str(free_port()),
        "TLSSTORM_COLLECTOR_DB_PATH": str(workdir / "capture.sqlite"),
        "TLSSTORM_FORWARD_OTLP_ENDPOINT": f"http://127.0.0.1:{capture.server_port}",
    })
    from tlsstorm.localstack.layout import LocalStack

    local = LocalStack()
    local.stack.start()
    try:
        receiver_pid, sender_pid = local.stack.pid("receiver"), local.stack.pid("sender")
        cpu_before = cpu_seconds_of(receiver_pid), cpu_seconds_of(sender_pid)
        wave = httpx.post(local.sender_url("/v1/waves"), json={
            "rate": 100, "count": messages, "tls_ratio": 0.3, "concurrency": 16}).json()
        while httpx.get(local.sender_url(f"/v1/waves/{wave['id']}")).json()["status"] == \
                "running":
            time.sleep(0.2)
        time.sleep(0.5)
        cpu_after = cpu_seconds_of(receiver_pid), cpu_seconds_of(sender_pid)
    finally:
        local.stack.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _Capture.bodies:
        time.sleep(0.1)
    time.sleep(1.5)
    capture.shutdown()
    spans = sum(_spans_in(body) for body in _Capture.bodies)
    figures = {
        "spans_per_message": spans / messages,
        "receiver_cpu_ms_per_message": (cpu_after[0] - cpu_before[0]) * 1000 / messages,
        "sender_cpu_ms_per_message": (cpu_after[1] - cpu_before[1]) * 1000 / messages,
    }
    return list(_Capture.bodies), figures


def replay(bodies: list[bytes], total_spans: int, workdir: Path) -> dict[str, float]:
    port = free_port()
    command = [sys.executable, "-m", "tlsstorm", "collector", "--http-port", str(port),
               "--db-path", str(workdir / "bench.sqlite")]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        command = ["taskset", "-c", "0", *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLSSTORM_")}
    collector = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        per_round = sum(_spans_in(body) for body in bodies)
        rounds = max(1, total_spans // per_round)
        work = bodies * rounds
        headers = {"content-type": "application/x-protobuf"}
        clients = [httpx.Client(base_url=url, headers=headers) for _ in range(4)]

        def post(index: int) -> None:
            response = clients[index % 4].post("/v1/traces", content=work[index])
            response.raise_for_status()

        cpu_before = cpu_seconds_of(collector.pid)
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(post, range(len(work))))
        wall = time.perf_counter() - started
        cpu = cpu_seconds_of(collector.pid) - cpu_before
        received = httpx.get(f"{url}/v1/summary").json()["spans"]["received"]
    finally:
        collector.terminate()
        collector.wait(15)
    return {"spans": per_round * rounds, "received": received, "wall_s": wall, "cpu_s": cpu,
            "batches": len(work), "pinned": command[0] == "taskset"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--spans", type=int, default=200_000)
    flags = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        bodies, emitted = capture_wave(flags.messages, workdir)
        result = replay(bodies, flags.spans, workdir)
    spans_per_wall_s = result["spans"] / result["wall_s"]
    spans_per_cpu_s = result["spans"] / result["cpu_s"]
    # A saturated pair: one core each; the busier side sets the message rate.
    busiest_ms = max(emitted["receiver_cpu_ms_per_message"], emitted["sender_cpu_ms_per_message"])
    saturated_spans_s = 1000 / busiest_ms * emitted["spans_per_message"]
    print(f"machine: {machine_note()}")
    print(f"captured: {len(bodies)} real exporter batches, "
          f"{emitted['spans_per_message']:.1f} spans per message (sender + receiver, 30% TLS)")
    print(f"receiver CPU {emitted['receiver_cpu_ms_per_message']:.3f} ms/msg, sender CPU "
          f"{emitted['sender_cpu_ms_per_message']:.3f} ms/msg (tracing on)")
    print(f"replayed: {result['spans']:,} spans in {result['batches']:,} batches, collector "
          f"{'pinned to one core' if result['pinned'] else 'not pinned'}; it counted "
          f"{result['received']:,}")
    print(f"ingest: {spans_per_wall_s:,.0f} spans/s wall, {spans_per_cpu_s:,.0f} spans per "
          f"collector CPU-second (target >= {TARGET_SPANS_PER_CORE:,})")
    print(f"a saturated receiver + sender emit ~{saturated_spans_s:,.0f} spans/s; headroom "
          f"{spans_per_cpu_s / saturated_spans_s:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
