"""What tracing costs the receiver per session: its spans recorded straight into OTLP bytes (what
the services' span exporter thread does with each session the event loop deferred to it:
common/telemetry.py's SpanRecorder with common/otlp_wire.py's encoder), beside the same spans
built as ReadableSpans and then encoded by tlsstorm's wire encoder and by OpenTelemetry's
protobuf encoder. Thread CPU, in-process, back to back (caches warm), no network. Then what
one export request of a second's spans (200 plain sessions' worth) costs the exporter's thread
through each HTTP transport it may use, to a real collector on loopback (the services send one
a second whatever the load; common/otlp_transport.py).

Usage: python bench/span_cost.py [--sessions 2000] [--requests 200]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator

from google.protobuf.internal import api_implementation
from opentelemetry.exporter.http.transport._base import BaseHTTPTransport
from opentelemetry.exporter.http.transport._requests import RequestsHTTPTransport
from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fixtures import free_port  # bench/ is on sys.path
from tlsstorm.common.machine import machine_note
from tlsstorm.common.otlp_transport import PlainHTTPTransport
from tlsstorm.common.otlp_wire import EncodedSpan, WireEncoder
from tlsstorm.common.telemetry import SpanRecorder, tracer_provider
from tlsstorm.localstack.processes import Child, Stack, tlsstorm_command
from tlsstorm.receiver.session import SessionRecord
from tlsstorm.receiver.tracing import emit_session_spans


def finished_session(tls: bool) -> SessionRecord:
    """A session record as the receiver hands it over: one 2 KiB message, QUIT, a wave."""
    record = SessionRecord(("127.0.0.1", 40000))
    record.tls, record.quit = tls, True
    record.messages, record.message_bytes, record.wave_id = 1, 2048, "bench"
    record.traceparents.append("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    if tls:
        record.handshake_ok, record.tls_version = True, "TLSv1.3"
        record.cipher, record.resumed = "TLS_AES_256_GCM_SHA384", False
        record.handshake_started_ns, record.handshake_ms = time.time_ns(), 2.0
    record.ended_perf_ns = record.started_perf_ns + 5_000_000
    return record


CHAIN = "leaf rsa2048 1,384 B + intermediate rsa2048 1,380 B"
SECOND_OF_SPANS = 200  # plain sessions: a second at the benchmarks' 200 messages/s


@contextlib.contextmanager
def collector_url() -> Iterator[str]:
    """`tlsstorm collector` as a process of its own on a free port, once it is ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        collector = Stack([Child("collector", tlsstorm_command("collector"), f"{url}/readyz", {
            "OTEL_SDK_DISABLED": "true", "TLSSTORM_COLLECTOR_HTTP_PORT": str(port),
            "TLSSTORM_COLLECTOR_DB_PATH": f"{folder}/collector.sqlite"})])
        collector.start()
        try:
            yield url
        finally:
            collector.stop()


def request_cpu_us(transport: BaseHTTPTransport, url: str, body: bytes, requests: int) -> float:
    """Thread CPU per export request of `body` through `transport`, after a few to warm up."""
    headers = {"Content-Type": "application/x-protobuf"}
    for number in range(requests + 5):
        if number == 5:
            started = time.thread_time_ns()
        result = transport.request("POST", url, headers=headers, timeout=10, data=body)
        if result.status_code != 200:
            raise SystemExit(f"the collector answered {result.status_code}: {result.error}")
    return (time.thread_time_ns() - started) / 1000 / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=200)
    flags = parser.parse_args()
    sessions = flags.sessions
    provider = tracer_provider("tlsstorm-receiver", exporter=InMemorySpanExporter())
    encoder = WireEncoder()
    print(f"machine: {machine_note()}; protobuf backend {api_implementation.Type()}")
    for tls in (False, True):
        records = [finished_session(tls) for _ in range(sessions)]
        encoded: list[EncodedSpan] = []
        into_bytes = SpanRecorder(provider, "bench", WireEncoder()).into(encoded.append)
        started = time.thread_time_ns()
        for record in records:
            emit_session_spans(into_bytes, record, "receiver.tlsstorm.test", 2525, CHAIN)
        recorded_us = (time.thread_time_ns() - started) / 1000 / sessions
        spans: list[ReadableSpan] = []
        readable = provider.recorder("bench").into(spans.append)
        started = time.thread_time_ns()
        for record in records:
            emit_session_spans(readable, record, "receiver.tlsstorm.test", 2525, CHAIN)
        built_us = (time.thread_time_ns() - started) / 1000 / sessions
        started = time.thread_time_ns()
        encoder.request(spans)
        encoded_us = (time.thread_time_ns() - started) / 1000 / sessions
        started = time.thread_time_ns()
        encode_spans(spans).SerializeToString()
        library_us = (time.thread_time_ns() - started) / 1000 / sessions
        print(f"{'STARTTLS' if tls else 'plain':>8} session, {len(spans) // sessions} span(s): "
              f"recorded into OTLP bytes {recorded_us:5.1f} us; as ReadableSpans: build "
              f"{built_us:5.1f} us + OTLP encoding {encoded_us:5.1f} us (OpenTelemetry's "
              f"encoder: {library_us:5.1f} us)")
        if not tls:
            body = WireEncoder().request(encoded[:SECOND_OF_SPANS])
    transports = {"requests": RequestsHTTPTransport(verify=True, cert=None),
                  "urllib3": Urllib3HTTPTransport(), "http.client": PlainHTTPTransport()}
    with collector_url() as url:
        costs = {name: request_cpu_us(transport, f"{url}/v1/traces", body, flags.requests)
                 for name, transport in transports.items()}
    print(f"one export request of {SECOND_OF_SPANS} plain sessions' spans ({len(body):,} B) "
          "to a collector on loopback, exporter thread CPU: "
          + ", ".join(f"{name} {cost:,.0f} us" for name, cost in costs.items()))


if __name__ == "__main__":
    main()
