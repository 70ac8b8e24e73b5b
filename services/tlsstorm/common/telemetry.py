"""Tracing set-up from the standard OTEL_* env vars, and W3C trace-context helpers.

No OTLP endpoint configured means no tracer provider at all: services then build no spans.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import DEFAULT_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

if TYPE_CHECKING:
    from tlsstorm.common.otlp_wire import WireEncoder

_logger = logging.getLogger(__name__)
# W3C trace context's traceparent, as OpenTelemetry's propagator matches it.
_TRACEPARENT = re.compile(
    r"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*")


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

    def building(self) -> Timed:
        """Times span building on this thread's CPU clock (a `with` block); the time is in
        what it gives."""
        return Timed(self)

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
    """A block timed on its thread's CPU clock and added to the span counts' building time;
    `ns` is what it took, once it is over. A class, not a generator: it runs per message."""

    __slots__ = ("_counts", "_started", "ns")

    def __init__(self, counts: SpanCounts) -> None:
        self._counts = counts
        self.ns = 0

    def __enter__(self) -> Timed:
        self._started = time.thread_time_ns()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.ns = time.thread_time_ns() - self._started
        self._counts.build_cpu_ns += self.ns


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
        if any(type(span) is DeferredSpans for span in spans):
            spans = self._build(spans)
        result = self._inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self._counts.exported += len(spans)
        else:  # the exporter gave up after its own retries
            self._counts.dropped += len(spans)
        return result

    def _build(self, spans: list) -> list:
        """Deferred spans built here, in the batch, where Python runs hot (see DeferredSpans);
        each queued item was counted ended as one span, and is now as many as its calls made
        (none, when the sampler dropped them), and one ended and dropped for each call that
        failed (its spans are not kept; the other calls go on)."""
        built: list = []
        sinks: dict[int, SpanRecorder] = {}
        for span in spans:
            if type(span) is not DeferredSpans:
                built.append(span)
                continue
            recorder = sinks.get(id(span.recorder))
            if recorder is None:
                recorder = sinks[id(span.recorder)] = span.recorder.into(built.append)
            before = len(built)
            failed = 0
            for build, args in span.calls:
                made = len(built)
                try:
                    build(recorder, *args)
                except Exception:  # a bug: said in the log and counted lost, the batch goes on
                    _logger.exception("building deferred spans failed; they are counted dropped")
                    del built[made:]
                    failed += 1
            self._counts.dropped += failed
            self._counts.ended += len(built) - before + failed - 1
        return built

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
            self._counts.ended += 1  # a deferred item as one, until it is built
        super().on_end(span)


def choose_ids(count: int, parent: SpanContext) -> list[tuple[int, int]]:
    """Trace and span ids for `count` spans to record later (SpanRecorder.record's `ids`),
    each under `parent` (the span current when the work began), or each a new trace when it is
    not valid. The sender's SMTP engine reports a connection when it is over, yet each message
    already carried its span's traceparent."""
    getrandbits = random.getrandbits
    if parent.is_valid:
        return [(parent.trace_id, getrandbits(64) or 1) for _ in range(count)]
    return [(getrandbits(128) or 1, getrandbits(64) or 1) for _ in range(count)]


class CountedTracerProvider(TracerProvider):
    """A tracer provider whose spans are counted from end to export (see SpanCounts), and
    that records spans of work already over (see SpanRecorder)."""

    def __init__(self, exporter: SpanExporter, resource: Resource) -> None:
        super().__init__(resource=resource)
        self.exporter = exporter
        self.span_counts = SpanCounts()
        self.processor = _CountingBatchProcessor(_CountingExporter(exporter, self.span_counts),
                                                 self.span_counts)
        self.add_span_processor(self.processor)

    def recorder(self, scope_name: str) -> SpanRecorder:
        """Spans recorded straight into OTLP bytes when the exporter sends those (every
        service's), else as ReadableSpans (a test's exporter that keeps spans)."""
        from tlsstorm.common.otlp_wire import WireEncoder, WireSpanExporter

        encoder = WireEncoder() if isinstance(self.exporter, WireSpanExporter) else None
        return SpanRecorder(self, scope_name, encoder)


UNSET_STATUS = Status(StatusCode.UNSET)  # a span that neither failed nor says it succeeded
_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)


class DeferredSpans:
    """Calls that build spans of finished work, made later on the exporter's thread in its
    batch (see SpanRecorder.defer). Its context is there for the batch processor, which queues
    what says it is sampled; the sampler decides when the spans are built."""

    __slots__ = ("calls", "recorder")
    context = SpanContext(1, 1, is_remote=False, trace_flags=_SAMPLED)

    def __init__(self, recorder: SpanRecorder, calls: list[tuple[Callable, tuple]]) -> None:
        self.recorder = recorder
        self.calls = calls


class SpanRecorder:
    """Spans of work already over (a session, a message), handed to the exporter whole.

    The receiver and the sender learn a span's every figure only when its work has ended, so a
    live SDK span (started, its attributes validated one by one under a lock, ended) is pure
    overhead: about two thirds of what building a session's spans cost (issue 33). Here each
    is one finished span; the provider's sampler still decides, as it would for a live span.
    The attributes are tlsstorm's own, few and of valid types, so the SDK's limits have
    nothing to cut. With an `encoder` (the services' WireSpanExporter), each is written
    straight into its OTLP bytes (an EncodedSpan); without, it is the SDK's ReadableSpan,
    which every exporter takes (tests keep them). The services `defer` the whole building to
    the exporter's thread: done there in batches it costs them about a third less CPU than
    done by the event loop between sessions, where it runs cold (issue 33)."""

    def __init__(self, provider: CountedTracerProvider, scope_name: str,
                 encoder: WireEncoder | None = None) -> None:
        self._sampler = provider.sampler
        self._resource = provider.resource
        self._on_end = provider.processor.on_end
        self._scope = InstrumentationScope(scope_name)
        self._encoder = encoder
        self._counts = provider.span_counts
        self._this_pass: list[tuple[Callable, tuple]] = []  # see defer_soon

    def into(self, on_end) -> SpanRecorder:
        """This recorder, handing its spans to `on_end` (the exporter's batch)."""
        recorder = copy.copy(self)
        recorder._on_end = on_end
        return recorder

    def defer(self, build: Callable, *args) -> None:
        """`build(recorder, *args)` records its spans later, on the exporter's thread: the
        caller's thread (the event loop) only queues the call. The arguments must not change
        after (a finished session's record)."""
        self._on_end(DeferredSpans(self, [(build, args)]))

    def defer_soon(self, build: Callable, *args) -> None:
        """As `defer`, for calls made many at a time (the sender's: a wave's tick hands out
        several connections' reports): the calls of one pass of the running event loop are
        queued together at its end, as one item, and that is timed into the telemetry
        account's building (each call here is a list append, too short to time)."""
        if not self._this_pass:
            asyncio.get_running_loop().call_soon(self._queue_this_pass)
        self._this_pass.append((build, args))

    def _queue_this_pass(self) -> None:
        calls, self._this_pass = self._this_pass, []
        with self._counts.building():
            self._on_end(DeferredSpans(self, calls))

    def record(self, name: str, parent: SpanContext | None, kind: SpanKind, start_ns: int,
               end_ns: int, attributes: dict, *, links: tuple[Link, ...] = (),
               status: Status = UNSET_STATUS, ids: tuple[int, int] | None = None) -> SpanContext:
        """The span's context (a child's parent), whether the sampler kept it or not; `ids`:
        the trace and span ids chosen for it beforehand (see choose_ids)."""
        if ids is not None:
            trace_id, span_id = ids
        else:
            trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
            span_id = random.getrandbits(64) or 1
        if self._sampler is DEFAULT_ON:  # OpenTelemetry's default: the parent decides
            sampled = parent.trace_flags.sampled if parent is not None else True
            recording, trace_state = sampled, parent.trace_state if parent is not None else None
        else:
            decided = self._sampler.should_sample(
                trace.set_span_in_context(trace.NonRecordingSpan(parent))
                if parent is not None else None, trace_id, name, kind, attributes, links)
            sampled, recording = decided.decision.is_sampled(), decided.decision.is_recording()
            trace_state = decided.trace_state
            if decided.attributes:
                attributes = {**attributes, **decided.attributes}
        context = SpanContext(trace_id, span_id, is_remote=False,
                              trace_flags=_SAMPLED if sampled else _NOT_SAMPLED,
                              trace_state=trace_state)
        if not recording:
            return context
        if self._encoder is not None:
            self._on_end(self._encoder.encoded_span(
                name, context, parent, kind, start_ns, end_ns, attributes, links, status,
                self._resource, self._scope))
        else:
            self._on_end(ReadableSpan(
                name, context, parent, self._resource, attributes, links=links, kind=kind,
                status=status, start_time=start_ns, end_time=end_ns,
                instrumentation_scope=self._scope))
        return context


def tracer_provider(
    service_name: str, exporter: SpanExporter | None = None
) -> CountedTracerProvider | None:
    """A provider exporting over OTLP/HTTP as OTEL_* says, or to `exporter` (tests)."""
    if exporter is None:
        if not export_configured():
            return None
        from tlsstorm.common.otlp_wire import WireSpanExporter

        exporter = WireSpanExporter()
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    return CountedTracerProvider(exporter, Resource.create(attributes))


def traceparent_of(span: trace.Span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def span_context_from_traceparent(traceparent: str | None) -> SpanContext | None:
    """The remote parent a W3C traceparent header names, or None when absent or malformed: the
    rules of OpenTelemetry's TraceContextTextMapPropagator (tests hold the two together),
    without the Context objects it builds around the answer, a third of a session's spans."""
    match = _TRACEPARENT.fullmatch(traceparent) if traceparent else None
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(flags, 16)))
