"""OTLP trace export bodies written straight in protobuf's wire format, for the exporter's thread.

Why not OpenTelemetry's own encoder: it builds a protobuf object per span, per attribute and per
value (about 15 per span here) and then serialises them: 40 of the 70 us that tracing cost per
plain session (bench/span_cost.py), the largest part of the instrument's own cost. The
messages written here are few and fixed (opentelemetry/proto/trace/v1/trace.proto, common.proto,
resource.proto), the wire format is stable by design, and tests decode every body with the
generated classes and compare it with what the library's encoder makes of the same spans.
Encoded attributes are cached by (key, value): most repeat from span to span.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status
from requests.utils import get_environ_proxies

from tlsstorm.common.otlp_transport import PlainHTTPTransport

_LENGTH_DELIMITED, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5
# SpanFlags: the is_remote bit is known (0x100) and, for a remote parent, set (0x200).
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_CACHE_LIMIT = 4096  # encoded attributes kept; past it the cache starts over
_TIMES = struct.Struct("<BQBQ")  # two fixed64 fields, each with its one-byte tag


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 is written as its two's complement, ten bytes
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _delimited(field: int, payload: bytes) -> bytes:
    return _tag(field, _LENGTH_DELIMITED) + _varint(len(payload)) + payload


# Span.kind (field 6): SPAN_KIND_* is the SDK's SpanKind value + 1. Span.flags (field 16).
_KINDS = {kind: _tag(6, _VARINT) + _varint(kind.value + 1) for kind in SpanKind}
_LOCAL_FLAGS = _tag(16, _FIXED32) + struct.pack("<I", _HAS_IS_REMOTE)
_REMOTE_FLAGS = _tag(16, _FIXED32) + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_LOCAL_LINK = _tag(6, _FIXED32) + struct.pack("<I", _HAS_IS_REMOTE)  # Link.flags (field 6)
_REMOTE_LINK = _tag(6, _FIXED32) + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)


def _any_value(value: Any) -> bytes:
    """An AnyValue's fields (common.proto), as OpenTelemetry's encoder chooses them."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _tag(2, _VARINT) + _varint(int(value))
    if isinstance(value, str):
        return _delimited(1, value.encode())
    if isinstance(value, int):
        return _tag(3, _VARINT) + _varint(value)
    if isinstance(value, float):
        return _tag(4, _FIXED64) + struct.pack("<d", value)
    if isinstance(value, bytes):
        return _delimited(7, value)
    if isinstance(value, Sequence):
        return _delimited(5, b"".join(_delimited(1, _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        return _delimited(6, b"".join(_delimited(1, _key_value(str(key), item))
                                      for key, item in value.items()))
    raise TypeError(f"an attribute value of type {type(value).__name__} has no OTLP form")


def _key_value(key: str, value: Any) -> bytes:
    return _delimited(1, key.encode()) + _delimited(2, _any_value(value))


class EncodedSpan:
    """A span a SpanRecorder wrote straight into its Span message: what a batch processor
    reads of a span (its context, for the sampled flag) and what a request groups spans by,
    without a ReadableSpan (its attribute mapping, its contexts) built for each span."""

    __slots__ = ("context", "encoded", "instrumentation_scope", "resource")

    def __init__(self, context: SpanContext, encoded: bytes, resource: Resource,
                 instrumentation_scope: InstrumentationScope) -> None:
        self.context = context
        self.encoded = encoded
        self.resource = resource
        self.instrumentation_scope = instrumentation_scope


class WireEncoder:
    """Encodes batches of finished spans into ExportTraceServiceRequest bodies."""

    def __init__(self) -> None:
        # Encoded attributes by (field, key, type, value); names by (field, text); statuses
        # by (15, code, description).
        self._entries: dict[tuple, bytes] = {}

    def request(self, spans: Sequence[ReadableSpan | EncodedSpan]) -> bytes:
        """One body: spans grouped by resource, then by instrumentation scope, as the
        library's encoder groups them (by identity here: a Resource hashes by JSON-encoding
        its attributes, and a provider has one)."""
        grouped: dict[int, tuple[Any, dict]] = {}
        for span in spans:
            resource = span.resource
            scopes = grouped.get(id(resource))
            if scopes is None:
                scopes = grouped[id(resource)] = (resource, defaultdict(list))
            scopes[1][span.instrumentation_scope or None].append(
                span.encoded if type(span) is EncodedSpan else self._span(span))
        body = bytearray()
        for resource, scopes in grouped.values():
            resource_spans = bytearray(_delimited(1, self._attributes_of(resource.attributes)))
            for scope, encoded in scopes.items():
                scope_spans = bytearray(_delimited(1, self._scope(scope)))
                for span in encoded:
                    scope_spans += _delimited(2, span)
                if scope is not None and scope.schema_url:
                    scope_spans += _delimited(3, scope.schema_url.encode())
                resource_spans += _delimited(2, bytes(scope_spans))
            if resource.schema_url:
                resource_spans += _delimited(3, resource.schema_url.encode())
            body += _delimited(1, bytes(resource_spans))
        return bytes(body)

    def _scope(self, scope) -> bytes:
        if scope is None:
            return b""
        out = bytearray()
        if scope.name:
            out += _delimited(1, scope.name.encode())
        if scope.version:
            out += _delimited(2, scope.version.encode())
        if scope.attributes:
            out += self._attributes_of(scope.attributes, field=3)
        return bytes(out)

    def _attributes_of(self, attributes: Mapping[str, Any] | None, field: int = 1) -> bytes:
        """Repeated KeyValue at `field` (1 in Resource, 9 in Span, 3 in Event and scope, 4 in
        Link), each entry cached whole; the value's type is in the key so True and 1 stay
        apart (the SDK keeps sequences as tuples, so values hash)."""
        if not attributes:
            return b""
        cache = self._entries
        out = bytearray()
        for key, value in attributes.items():
            cache_key = (field, key, value.__class__, value)
            try:
                entry = cache.get(cache_key)
            except TypeError:  # an unhashable value: encoded, not kept
                entry, cache_key = None, None
            if entry is None:
                encoded = _key_value(key, value)
                entry = _tag(field, _LENGTH_DELIMITED) + _varint(len(encoded)) + encoded
                if cache_key is not None:
                    self._cached(cache_key, entry)
            out += entry
        return bytes(out)

    def encoded_span(self, name: str, context: SpanContext, parent: SpanContext | None,
                     kind: SpanKind, start_ns: int, end_ns: int, attributes: Mapping[str, Any],
                     links: Sequence[Link], status: Status, resource: Resource,
                     scope: InstrumentationScope) -> EncodedSpan:
        """A finished span's parts, encoded at once (see SpanRecorder)."""
        return EncodedSpan(context, self.span_bytes(name, context, parent, kind, start_ns,
                                                    end_ns, attributes, links=links,
                                                    status=status), resource, scope)

    def _field_of(self, field: int, text: str) -> bytes:
        """A string field (a span's name), cached: a service's spans have a few names."""
        cache_key = (field, text)
        entry = self._entries.get(cache_key)
        if entry is None:
            entry = self._cached(cache_key, _delimited(field, text.encode()))
        return entry

    def _status_of(self, status: Status) -> bytes:
        """Span.status (field 15), cached by code and description."""
        cache_key = (15, status.status_code, status.description)
        entry = self._entries.get(cache_key)
        if entry is None:
            encoded = b""
            if status.description:
                encoded += _delimited(2, status.description.encode())
            if status.status_code.value:
                encoded += _tag(3, _VARINT) + _varint(status.status_code.value)
            entry = self._cached(cache_key, _delimited(15, encoded))
        return entry

    def _cached(self, cache_key: tuple, entry: bytes) -> bytes:
        if len(self._entries) >= _CACHE_LIMIT:
            self._entries.clear()
        self._entries[cache_key] = entry
        return entry

    def _span(self, span: ReadableSpan) -> bytes:
        return self.span_bytes(
            span.name, span.get_span_context(), span.parent, span.kind, span.start_time,
            span.end_time, span.attributes, span.events, span.links, span.status,
            span.dropped_attributes, span.dropped_events, span.dropped_links)

    def span_bytes(self, name: str, context: SpanContext, parent: SpanContext | None,
                   kind: SpanKind, start_ns: int | None, end_ns: int | None,
                   attributes: Mapping[str, Any] | None, events: Sequence[Event] = (),
                   links: Sequence[Link] = (), status: Status | None = None,
                   dropped_attributes: int = 0, dropped_events: int = 0,
                   dropped_links: int = 0) -> bytes:
        """One Span message (trace.proto) from a span's parts: a ReadableSpan's, or those a
        SpanRecorder writes straight into bytes."""
        out = bytearray(b"\x0a\x10")  # field 1, 16 bytes
        out += context.trace_id.to_bytes(16, "big")
        out += b"\x12\x08"  # field 2, 8 bytes
        out += context.span_id.to_bytes(8, "big")
        if context.trace_state:
            out += _delimited(3, ",".join(f"{key}={value}"
                                          for key, value in context.trace_state.items()).encode())
        if parent:
            out += b"\x22\x08"  # field 4, 8 bytes
            out += parent.span_id.to_bytes(8, "big")
        out += self._field_of(5, name)
        out += _KINDS[kind]
        out += _TIMES.pack(0x39, start_ns or 0, 0x41, end_ns or 0)  # fields 7, 8
        out += self._attributes_of(attributes, field=9)
        if dropped_attributes:
            out += _tag(10, _VARINT) + _varint(dropped_attributes)
        for event in events:
            encoded = bytearray(_tag(1, _FIXED64) + struct.pack("<Q", event.timestamp))
            encoded += _delimited(2, event.name.encode())
            encoded += self._attributes_of(event.attributes, field=3)
            if event.dropped_attributes:
                encoded += _tag(4, _VARINT) + _varint(event.dropped_attributes)
            out += _delimited(11, bytes(encoded))
        if dropped_events:
            out += _tag(12, _VARINT) + _varint(dropped_events)
        for link in links:
            encoded = bytearray(_delimited(1, link.context.trace_id.to_bytes(16, "big")))
            encoded += _delimited(2, link.context.span_id.to_bytes(8, "big"))
            encoded += self._attributes_of(link.attributes, field=4)
            if link.dropped_attributes:
                encoded += _tag(5, _VARINT) + _varint(link.dropped_attributes)
            encoded += _REMOTE_LINK if link.context.is_remote else _LOCAL_LINK
            out += _delimited(13, bytes(encoded))
        if dropped_links:
            out += _tag(14, _VARINT) + _varint(dropped_links)
        if status is not None:
            out += self._status_of(status)
        out += _REMOTE_FLAGS if parent is not None and parent.is_remote else _LOCAL_FLAGS
        return bytes(out)


class WireSpanExporter(OTLPSpanExporter):
    """OpenTelemetry's OTLP/HTTP exporter (endpoint, headers, TLS, compression, timeout and
    retries as OTEL_* say) sending bodies the WireEncoder wrote. It reaches into the exporter's
    client, hence the minor version pinned in pyproject.toml; tests export through it to the
    collector.

    To a plain-HTTP endpoint no proxy serves (the collector beside the services), requests go
    through the standard library's http.client (PlainHTTPTransport) instead of the library's
    requests session: a quarter of the CPU per export (see common/otlp_transport.py), and the
    services export every second whatever the load. HTTPS endpoints and proxied ones keep the
    requests session, and with it every TLS and proxy setting."""

    def __init__(self) -> None:
        super().__init__()
        self._wire = WireEncoder()
        if self._endpoint.startswith("http://") and not get_environ_proxies(self._endpoint):
            self._client._transport.close()
            self._client._transport = PlainHTTPTransport()

    @property
    def transport(self) -> str:
        """Which HTTP library sends: "http.client" or "requests"."""
        return "http.client" if isinstance(self._client._transport, PlainHTTPTransport) \
            else "requests"

    def export(self, spans: Sequence[ReadableSpan | EncodedSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        sent = self._client.export(self._wire.request(spans))
        return SpanExportResult.SUCCESS if sent.success else SpanExportResult.FAILURE
