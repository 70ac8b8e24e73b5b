"""What tlsstorm does itself to make tracing cheap, held to what OpenTelemetry does: its OTLP
bodies (common/otlp_wire.py) decode to the message OpenTelemetry's encoder makes of the same
spans, and the exporter built on them delivers to a real collector; its recorded spans
(telemetry.SpanRecorder) are sampled as live SDK spans are; its traceparent reading agrees with
the W3C propagator's."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

from tests.helpers import wait_for
from tlsstorm.common import attributes as attr
from tlsstorm.common.otlp_wire import EncodedSpan, WireEncoder, WireSpanExporter
from tlsstorm.common.telemetry import SpanRecorder, span_context_from_traceparent, tracer_provider

REMOTE = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True,
                     trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "value1")]))


class _FixedIds(IdGenerator):
    def __init__(self, trace_id: int, span_id: int) -> None:
        self.trace_id, self.span_id = trace_id, span_id

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id


def _spans_of_every_shape() -> list:
    """Spans from two resources and three scopes: every attribute type the SDK keeps, negative
    and 64-bit ints, events, remote and local links, status with and without a message, a
    remote parent with a trace state, and a root span."""
    finished = InMemorySpanExporter()
    for service in ("tlsstorm-receiver", "tlsstorm-sender"):
        provider = TracerProvider(resource=Resource.create({"service.name": service,
                                                            "k8s.pod.uid": 7}))
        provider.add_span_processor(SimpleSpanProcessor(finished))
        for scope in ("tlsstorm", "tlsstorm.meter"):
            tracer = provider.get_tracer(scope, "1.2", schema_url="https://opentelemetry.io/s/1")
            context = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
            root = tracer.start_span("smtp.session", kind=SpanKind.SERVER, attributes={
                "s": "x", "empty": "", "ü": "grüße", "t": True, "f": False, "i": 0,
                "neg": -5, "big": 2**63 - 1, "d": 0.25, "nan": float("inf"),
                "strs": ("a", "b"), "ints": (1, -2), "bools": (True,), "floats": (1.5,),
            }, links=[Link(REMOTE, {"why": "batch"}),
                      Link(SpanContext(7, 8, is_remote=False), {})])
            child = tracer.start_span(attr.SPAN_HANDSHAKE, context=context,
                                      kind=SpanKind.INTERNAL, attributes={"n": 1})
            child.add_event("alert", {"code": 40}, timestamp=1_700_000_000_000_000_000)
            child.add_event("plain")
            child.set_status(Status(StatusCode.ERROR, "handshake failed"))
            child.end()
            root.set_status(Status(StatusCode.OK))
            root.end()
            for kind in SpanKind:
                tracer.start_span(f"kind-{kind.name}", kind=kind).end()
    return list(finished.get_finished_spans())


def test_bodies_decode_to_what_opentelemetrys_encoder_makes():
    spans = _spans_of_every_shape()
    encoder = WireEncoder()
    for _ in range(2):  # the second time from the encoder's cache
        ours = ExportTraceServiceRequest.FromString(encoder.request(spans))
        assert ours == encode_spans(spans)
    assert len(ours.resource_spans) == 2
    assert {len(resource.scope_spans) for resource in ours.resource_spans} == {2}
    assert ExportTraceServiceRequest.FromString(encoder.request([])) == encode_spans([])


def _record_every_shape(recorder: SpanRecorder) -> None:
    """The spans the receiver and the sender record, and then some: a remote parent with a
    trace state, remote and local links, every status, a root, a child, every attribute type."""
    attributes = {"s": "x", "empty": "", "ü": "grüße", "t": True, "f": False, "i": 0,
                  "neg": -5, "big": 2**63 - 1, "d": 0.25, "strs": ("a", "b"), "ints": (1, -2)}
    session = recorder.record(attr.SPAN_SESSION, REMOTE, SpanKind.SERVER, 10, 20, attributes,
                              links=(Link(REMOTE), Link(SpanContext(7, 8, is_remote=False))),
                              ids=(REMOTE.trace_id, 0x51))
    recorder.record(attr.SPAN_HANDSHAKE, session, SpanKind.INTERNAL, 11, 15, {"n": 1},
                    status=Status(StatusCode.ERROR, "handshake failed"),
                    ids=(REMOTE.trace_id, 0x52))
    recorder.record(attr.SPAN_SEND, None, SpanKind.CLIENT, 30, 40, {attr.MODE: "plain"},
                    status=Status(StatusCode.OK), ids=(0x77, 0x53))
    recorder.record("smtp.DATA", None, SpanKind.INTERNAL, 31, 32, {}, ids=(0x77, 0x54))
    recorder.record(attr.SPAN_HANDSHAKE, session, SpanKind.INTERNAL, 16, 18, {"n": 2},
                    status=Status(StatusCode.ERROR, "handshake timed out"),
                    ids=(REMOTE.trace_id, 0x55))  # the same code, another description


def test_spans_recorded_into_bytes_are_the_spans_recorded_as_readable_spans():
    """A SpanRecorder with an encoder (every service's, see the next test) writes each span's
    bytes at once; the body made of them is what OpenTelemetry's encoder makes of the same
    spans recorded as ReadableSpans."""
    kept = InMemorySpanExporter()
    provider = tracer_provider("tlsstorm-receiver", exporter=kept)
    _record_every_shape(SpanRecorder(provider, "tlsstorm.receiver", WireEncoder()))
    _record_every_shape(provider.recorder("tlsstorm.receiver"))
    provider.force_flush()
    spans = kept.get_finished_spans()
    encoded = [span for span in spans if isinstance(span, EncodedSpan)]
    readable = [span for span in spans if not isinstance(span, EncodedSpan)]
    assert len(encoded) == len(readable) == 5
    body = ExportTraceServiceRequest.FromString(WireEncoder().request(encoded))
    assert body == encode_spans(readable)
    both = ExportTraceServiceRequest.FromString(WireEncoder().request(spans))
    assert len(both.resource_spans[0].scope_spans[0].spans) == 10


def test_deferred_spans_are_built_at_export_and_counted_as_spans():
    """SpanRecorder.defer: nothing is built when called (the event loop only queues it); at
    export each call builds its spans, counted ended as the spans it made: none when the
    sampler drops them, one dropped (and the rest of the batch exported) when it fails."""
    kept = InMemorySpanExporter()
    provider = tracer_provider("tlsstorm-receiver", exporter=kept)
    recorder = provider.recorder("tlsstorm.receiver")
    unsampled = SpanContext(5, 6, is_remote=True, trace_flags=TraceFlags(0))
    calls: list[str] = []

    def session(spans: SpanRecorder, parent: SpanContext | None, handshake: bool) -> None:
        calls.append("session")
        context = spans.record(attr.SPAN_SESSION, parent, SpanKind.SERVER, 1, 2, {})
        if handshake:
            spans.record(attr.SPAN_HANDSHAKE, context, SpanKind.INTERNAL, 1, 2, {})

    def broken(spans: SpanRecorder) -> None:
        spans.record(attr.SPAN_SESSION, None, SpanKind.SERVER, 1, 2, {})
        raise ValueError("a bug in building")

    recorder.defer(session, REMOTE, True)
    recorder.defer(broken)
    recorder.defer(session, unsampled, True)
    recorder.defer(session, None, False)
    assert calls == []
    counts = provider.span_counts
    assert counts.ended == 4  # each call one span until it is built
    assert provider.force_flush(10_000)
    assert calls == ["session"] * 3
    names = [span.name for span in kept.get_finished_spans()]
    assert names == [attr.SPAN_SESSION, attr.SPAN_HANDSHAKE, attr.SPAN_SESSION]
    assert (counts.ended, counts.exported, counts.dropped) == (4, 3, 1)


def test_calls_deferred_in_one_loop_pass_are_queued_as_one_and_counted_as_their_spans():
    """SpanRecorder.defer_soon (the sender's, a wave's tick hands out several reports): the
    calls of one pass of the event loop reach the batch processor as one item at its end, timed
    as building; at export each call builds its spans, a failing call is one span dropped and
    the other calls of its item are kept."""
    kept = InMemorySpanExporter()
    provider = tracer_provider("tlsstorm-sender", exporter=kept)
    recorder = provider.recorder("tlsstorm.sender")
    counts = provider.span_counts

    def message(spans: SpanRecorder, number: int) -> None:
        spans.record(attr.SPAN_SEND, None, SpanKind.CLIENT, 1, 2, {attr.MESSAGE_BYTES: number})

    def broken(spans: SpanRecorder) -> None:
        spans.record(attr.SPAN_SEND, None, SpanKind.CLIENT, 1, 2, {})
        raise ValueError("a bug in building")

    async def two_passes() -> list[int]:
        queued = []
        for number in range(3):
            recorder.defer_soon(message, number)
        recorder.defer_soon(broken)
        queued.append(counts.ended)  # nothing queued before the pass ends
        await asyncio.sleep(0)
        queued.append(counts.ended)  # the pass's four calls: one item
        recorder.defer_soon(message, 3)
        await asyncio.sleep(0)
        queued.append(counts.ended)
        return queued

    assert asyncio.run(two_passes()) == [0, 1, 2]
    assert counts.build_cpu_ns > 0
    assert provider.force_flush(10_000)
    sizes = [span.attributes[attr.MESSAGE_BYTES] for span in kept.get_finished_spans()]
    assert sizes == [0, 1, 2, 3]
    assert (counts.ended, counts.exported, counts.dropped) == (5, 4, 1)


def test_a_traced_service_exports_through_it_to_the_collector(start_collector, monkeypatch):
    """tracer_provider() as every service builds it from OTEL_*: its live spans and the spans
    its recorder writes straight into bytes reach the collector (which decodes with the
    generated classes) and are counted exported, none dropped."""
    collector = start_collector()
    for proxy in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.http)
    provider = tracer_provider("tlsstorm-receiver")
    tracer = provider.get_tracer("tlsstorm")
    recorder = provider.recorder("tlsstorm.receiver")
    for index in range(20):
        tracer.start_span(attr.SPAN_SESSION, kind=SpanKind.SERVER, attributes={
            attr.MODE: "plain", attr.SMTP_MESSAGES: 1, attr.WAVE_ID: "wire",
            attr.SESSION_CPU_US: 100 + index}).end()
        recorder.record(attr.SPAN_SESSION, None, SpanKind.SERVER, time.time_ns() - 1000,
                        time.time_ns(), {attr.MODE: "starttls", attr.SMTP_MESSAGES: 2,
                                         attr.WAVE_ID: "wire", attr.SESSION_CPU_US: 300})
    assert provider.exporter.transport == "http.client"  # http://, no proxy
    assert provider.force_flush(10_000)
    counts = provider.span_counts
    assert (counts.ended, counts.exported, counts.dropped) == (40, 40, 0)
    summary = wait_for(lambda: httpx.get(f"{collector.http}/v1/summary",
                                         params={"wave": "wire"}).json())
    assert summary["receiver"]["plain"]["sessions"] == 20, summary
    assert summary["receiver"]["starttls"]["sessions"] == 20, summary
    assert summary["receiver"]["starttls"]["messages"] == 40, summary
    provider.shutdown()


def test_the_kept_connection_outlives_a_collector_restart(start_collector, monkeypatch):
    """The exporter keeps one connection to the collector from export to export; when the
    collector restarts on its port (the kept connection is closed under it), the next export
    goes through on a new connection: every span exported, none dropped. And a collector that
    is down: the spans are counted dropped, the exporter keeps working when it is back."""
    first = start_collector()
    port = first.service.http_port
    for proxy in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", first.http)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    provider = tracer_provider("tlsstorm-receiver")
    recorder = provider.recorder("tlsstorm.receiver")
    transport = provider.exporter._client._transport

    def export(wave: str, sessions: int) -> None:
        for _ in range(sessions):
            recorder.record(attr.SPAN_SESSION, None, SpanKind.SERVER, time.time_ns() - 1000,
                            time.time_ns(), {attr.MODE: "plain", attr.SMTP_MESSAGES: 1,
                                             attr.WAVE_ID: wave, attr.SESSION_CPU_US: 100})
        provider.force_flush(10_000)

    def restarted(previous):
        """A new collector on the port `previous` had, once `previous` has stopped."""
        previous.stop()
        database = previous.service.settings.db_path
        return start_collector(http_port=port,
                               db_path=database.with_name(f"{time.time_ns()}.sqlite"))

    export("before", 3)
    kept = transport._connection
    export("before", 3)
    assert transport._connection is kept and kept is not None  # one connection, kept
    second = restarted(first)
    export("after", 4)  # on the kept connection, closed by the restart: again, on a new one
    summary = wait_for(lambda: httpx.get(f"{second.http}/v1/summary",
                                         params={"wave": "after"}).json())
    assert summary["receiver"]["plain"]["sessions"] == 4, summary
    second.stop()
    export("down", 2)  # refused, retried with backoff until the 2 s timeout: dropped, counted
    third = restarted(second)  # (second has stopped already)
    export("back", 1)
    counts = provider.span_counts
    assert (counts.ended, counts.exported, counts.dropped) == (13, 11, 2)
    summary = wait_for(lambda: httpx.get(f"{third.http}/v1/summary",
                                         params={"wave": "back"}).json())
    assert summary["receiver"]["plain"]["sessions"] == 1, summary
    provider.shutdown()


@pytest.mark.parametrize(("endpoint", "proxy", "transport"), [
    ("http://collector:8027", None, "http.client"),
    ("http://collector:8027", "http://proxy.example:3128", "requests"),
    ("https://collector:8027", None, "requests"),
])
def test_the_requests_session_stays_where_tls_or_a_proxy_needs_it(monkeypatch, endpoint, proxy,
                                                                   transport):
    """The lighter http.client transport only for plain HTTP without a proxy: HTTPS keeps
    the requests session's CA handling, a proxy in the environment keeps being used."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                 "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    if proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    assert WireSpanExporter().transport == transport


@pytest.mark.parametrize("traceparent", [
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    " \t00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\t",
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-future",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    "", "garbage", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
])
def test_traceparents_are_read_as_opentelemetrys_propagator_reads_them(traceparent):
    expected = trace.get_current_span(TraceContextTextMapPropagator().extract(
        {"traceparent": traceparent})).get_span_context()
    ours = span_context_from_traceparent(traceparent)
    if not expected.is_valid:
        assert ours is None
    else:
        assert ours == expected and ours.is_remote and ours.trace_flags == expected.trace_flags


@pytest.mark.parametrize("parent", [None, REMOTE,
                                    SpanContext(5, 6, is_remote=True, trace_flags=TraceFlags(0))],
                         ids=["root", "sampled parent", "unsampled parent"])
@pytest.mark.parametrize("sampler", [DEFAULT_ON, DEFAULT_OFF, ALWAYS_OFF,
                                     ParentBasedTraceIdRatio(0.5)],
                         ids=["parentbased_always_on", "parentbased_always_off", "always_off",
                              "parentbased_traceidratio"])
def test_recorded_spans_are_sampled_as_live_spans_are(parent, sampler):
    """A SpanRecorder's span against a live SDK span with the same parent and ids: exported or
    not, the same flags and trace state (the default sampler has a path of its own)."""
    exported = InMemorySpanExporter()
    provider = tracer_provider("tlsstorm-receiver", exporter=exported)
    provider.sampler = sampler
    ids = (parent.trace_id if parent else 0x1234, 0x42)
    recorded = provider.recorder("tlsstorm.receiver").record(
        attr.SPAN_SESSION, parent, SpanKind.SERVER, 1, 2, {attr.MODE: "plain"}, ids=ids)
    provider.force_flush()
    kept = [span.context for span in exported.get_finished_spans()]
    exported.clear()
    live_provider = TracerProvider(sampler=sampler, id_generator=_FixedIds(*ids))
    live_provider.add_span_processor(SimpleSpanProcessor(exported))
    context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent else None
    live = live_provider.get_tracer("t").start_span(attr.SPAN_SESSION, context=context,
                                                    kind=SpanKind.SERVER)
    live.end()
    assert kept == [span.context for span in exported.get_finished_spans()]
    assert (recorded.trace_flags, recorded.trace_state) == (live.get_span_context().trace_flags,
                                                            live.get_span_context().trace_state)
