"""What tlsstorm does itself to make tracing cheap, held to what OpenTelemetry does: its OTLP
bodies (common/otlp_wire.py) decode to the message OpenTelemetry's encoder makes of the same
spans, and the exporter built on them delivers to a real collector; its recorded spans
(telemetry.SpanRecorder) are sampled as live SDK spans are; its traceparent reading agrees with
the W3C propagator's."""

from __future__ import annotations

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
from tlsstorm.common.otlp_wire import WireEncoder
from tlsstorm.common.telemetry import span_context_from_traceparent, tracer_provider

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


def test_a_traced_service_exports_through_it_to_the_collector(start_collector, monkeypatch):
    """tracer_provider() as every service builds it from OTEL_*: its spans reach the collector
    (which decodes with the generated classes) and are counted exported, none dropped."""
    collector = start_collector()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.http)
    provider = tracer_provider("tlsstorm-receiver")
    tracer = provider.get_tracer("tlsstorm")
    for index in range(20):
        tracer.start_span(attr.SPAN_SESSION, kind=SpanKind.SERVER, attributes={
            attr.MODE: "plain", attr.SMTP_MESSAGES: 1, attr.WAVE_ID: "wire",
            attr.SESSION_CPU_US: 100 + index}).end()
    assert provider.force_flush(10_000)
    counts = provider.span_counts
    assert (counts.ended, counts.exported, counts.dropped) == (20, 20, 0)
    summary = wait_for(lambda: httpx.get(f"{collector.http}/v1/summary",
                                         params={"wave": "wire"}).json())
    assert summary["receiver"]["plain"]["sessions"] == 20, summary
    provider.shutdown()


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
