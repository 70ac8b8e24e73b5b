"""Tracing set-up from the standard OTEL_* env vars, and W3C trace-context helpers.

No OTLP endpoint configured means no tracer provider at all: services then build no spans.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


def endpoint_configured() -> bool:
    """True when the OTEL_* environment names an OTLP endpoint for traces."""
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def export_configured() -> bool:
    """True when the OTEL_* environment asks for OTLP trace export."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return endpoint_configured()


class SpanCounts:
    """Spans from end to export: whatever is lost on the way is counted, never silent. And what
    they cost: building them (timed by the service where it builds them) and exporting them
    (all the CPU of the exporter's thread, which does nothing else: batching, encoding, sending
    and its wake-ups), the telemetry account a service shows apart from the work its spans
    describe."""

    __slots__ = ("_exporter_clock", "_exporter_ns", "build_cpu_ns", "dropped", "ended",
                 "exported")

    def __init__(self) -> None:
        self.ended = 0
        self.exported = 0
        self.dropped = 0
        self.build_cpu_ns = 0
        self._exporter_clock: int | None = None
        self._exporter_ns = 0  # its clock's last reading (kept when the thread has ended)

    @contextlib.contextmanager
    def building(self) -> Iterator[Timed]:
        """Times span building on this thread's CPU clock; the time is in what it yields."""
        timed = Timed()
        started = time.thread_time_ns()
        try:
            yield timed
        finally:
            timed.ns = time.thread_time_ns() - started
            self.build_cpu_ns += timed.ns

    def exporting_on_this_thread(self) -> None:
        """Called by the exporter on its thread: that thread's CPU clock is the exporting cost."""
        if self._exporter_clock is None:
            self._exporter_clock = time.pthread_getcpuclockid(threading.get_ident())

    def export_cpu_ns(self) -> int:
        if self._exporter_clock is not None:
            try:
                self._exporter_ns = time.clock_gettime_ns(self._exporter_clock)
            except OSError:  # the thread has ended (shut down): its last reading stands
                self._exporter_clock = None
        return self._exporter_ns

    def cpu_seconds(self) -> dict[str, float]:
        return {"building_seconds": self.build_cpu_ns / 1e9,
                "exporting_seconds": self.export_cpu_ns() / 1e9}

    def cpu_ns(self) -> int:
        """Building and exporting together."""
        return self.build_cpu_ns + self.export_cpu_ns()


class Timed:
    """What a timed block took, once it is over."""

    __slots__ = ("ns",)

    def __init__(self) -> None:
        self.ns = 0


def span_counts_of(provider: TracerProvider | None) -> SpanCounts:
    """The provider's span counts and telemetry account (counts of its own, which stay at zero,
    for a provider that keeps none: tracing off, or a test's)."""
    counts = getattr(provider, "span_counts", None)
    return counts if counts is not None else SpanCounts()


class _CountingExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, counts: SpanCounts) -> None:
        self._inner = inner
        self._counts = counts

    def export(self, spans) -> SpanExportResult:
        self._counts.exporting_on_this_thread()
        result = self._inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self._counts.exported += len(spans)
        else:  # the exporter gave up after its own retries
            self._counts.dropped += len(spans)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CountingBatchProcessor(BatchSpanProcessor):
    def __init__(self, exporter: SpanExporter, counts: SpanCounts) -> None:
        super().__init__(exporter)
        self._counts = counts

    def on_end(self, span) -> None:
        if span.context and span.context.trace_flags.sampled:
            self._counts.ended += 1
        super().on_end(span)


class PresetIdGenerator(RandomIdGenerator):
    """Random ids, except for a span whose ids were chosen before it was recorded.

    The sender's SMTP engine reports a connection when it is over, yet each message already
    carried its span's traceparent header: that span is recorded afterwards with those ids.
    """

    def __init__(self) -> None:
        self._trace_id: int | None = None
        self._span_id: int | None = None

    @staticmethod
    def choose() -> tuple[int, int]:
        """Ids for a span to record later under the current span (or as a new trace)."""
        parent = trace.get_current_span().get_span_context()
        trace_id = parent.trace_id if parent.is_valid else random.getrandbits(128) or 1
        return trace_id, random.getrandbits(64) or 1

    @contextlib.contextmanager
    def preset(self, trace_id: int, span_id: int) -> Iterator[None]:
        """The span started inside gets these ids (the trace id only if it has no parent)."""
        self._trace_id, self._span_id = trace_id, span_id
        try:
            yield
        finally:
            self._trace_id = self._span_id = None

    def generate_trace_id(self) -> int:
        if self._trace_id is not None:
            return self._trace_id
        return super().generate_trace_id()

    def generate_span_id(self) -> int:
        if self._span_id is not None:
            return self._span_id
        return super().generate_span_id()


class CountedTracerProvider(TracerProvider):
    """A tracer provider whose spans are counted from end to export (see SpanCounts), with
    ids that can be chosen ahead (see PresetIdGenerator)."""

    def __init__(self, exporter: SpanExporter, resource: Resource) -> None:
        self.ids = PresetIdGenerator()
        super().__init__(resource=resource, id_generator=self.ids)
        self.span_counts = SpanCounts()
        self.add_span_processor(
            _CountingBatchProcessor(_CountingExporter(exporter, self.span_counts),
                                    self.span_counts))


def tracer_provider(
    service_name: str, exporter: SpanExporter | None = None
) -> CountedTracerProvider | None:
    """A provider exporting over OTLP/HTTP as OTEL_* says, or to `exporter` (tests)."""
    if exporter is None:
        if not export_configured():
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    return CountedTracerProvider(exporter, Resource.create(attributes))


def traceparent_of(span: trace.Span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def context_from_traceparent(traceparent: str | None) -> Context | None:
    """The remote parent a traceparent header names, or None when absent or malformed."""
    if not traceparent:
        return None
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context
