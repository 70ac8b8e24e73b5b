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
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

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
_KINDS = {value: _tag(6, _VARINT) + _varint(value + 1) for value in range(5)}
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


class WireEncoder:
    """Encodes batches of finished spans into ExportTraceServiceRequest bodies."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str, type, Any], bytes] = {}

    def request(self, spans: Sequence[ReadableSpan]) -> bytes:
        """One body: spans grouped by resource, then by instrumentation scope, as the
        library's encoder groups them (by identity here: a Resource hashes by JSON-encoding
        its attributes, and a provider has one)."""
        grouped: dict[int, tuple[Any, dict]] = {}
        for span in spans:
            resource = span.resource
            scopes = grouped.get(id(resource))
            if scopes is None:
                scopes = grouped[id(resource)] = (resource, defaultdict(list))
            scopes[1][span.instrumentation_scope or None].append(self._span(span))
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
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    cache[cache_key] = entry
            out += entry
        return bytes(out)

    def _span(self, span: ReadableSpan) -> bytes:
        context = span.get_span_context()
        out = bytearray(b"\x0a\x10")  # field 1, 16 bytes
        out += context.trace_id.to_bytes(16, "big")
        out += b"\x12\x08"  # field 2, 8 bytes
        out += context.span_id.to_bytes(8, "big")
        if context.trace_state:
            out += _delimited(3, ",".join(f"{key}={value}"
                                          for key, value in context.trace_state.items()).encode())
        parent = span.parent
        if parent:
            out += b"\x22\x08"  # field 4, 8 bytes
            out += parent.span_id.to_bytes(8, "big")
        out += _delimited(5, span.name.encode())
        out += _KINDS[span.kind.value]
        out += _TIMES.pack(0x39, span.start_time or 0, 0x41, span.end_time or 0)  # fields 7, 8
        out += self._attributes_of(span.attributes, field=9)
        if span.dropped_attributes:
            out += _tag(10, _VARINT) + _varint(span.dropped_attributes)
        for event in span.events:
            encoded = bytearray(_tag(1, _FIXED64) + struct.pack("<Q", event.timestamp))
            encoded += _delimited(2, event.name.encode())
            encoded += self._attributes_of(event.attributes, field=3)
            if event.dropped_attributes:
                encoded += _tag(4, _VARINT) + _varint(event.dropped_attributes)
            out += _delimited(11, bytes(encoded))
        if span.dropped_events:
            out += _tag(12, _VARINT) + _varint(span.dropped_events)
        for link in span.links:
            encoded = bytearray(_delimited(1, link.context.trace_id.to_bytes(16, "big")))
            encoded += _delimited(2, link.context.span_id.to_bytes(8, "big"))
            encoded += self._attributes_of(link.attributes, field=4)
            if link.dropped_attributes:
                encoded += _tag(5, _VARINT) + _varint(link.dropped_attributes)
            encoded += _REMOTE_LINK if link.context.is_remote else _LOCAL_LINK
            out += _delimited(13, bytes(encoded))
        if span.dropped_links:
            out += _tag(14, _VARINT) + _varint(span.dropped_links)
        status = span.status
        if status is not None:
            encoded = b""
            if status.description:
                encoded += _delimited(2, status.description.encode())
            if status.status_code.value:
                encoded += _tag(3, _VARINT) + _varint(status.status_code.value)
            out += _delimited(15, encoded)
        out += _REMOTE_FLAGS if parent is not None and parent.is_remote else _LOCAL_FLAGS
        return bytes(out)


class WireSpanExporter(OTLPSpanExporter):
    """OpenTelemetry's OTLP/HTTP exporter (endpoint, headers, TLS, compression, timeout and
    retries as OTEL_* say) sending bodies the WireEncoder wrote. It reaches into the exporter's
    client, hence the minor version pinned in pyproject.toml; tests export through it to the
    collector."""

    def __init__(self) -> None:
        super().__init__()
        self._wire = WireEncoder()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        sent = self._client.export(self._wire.request(spans))
        return SpanExportResult.SUCCESS if sent.success else SpanExportResult.FAILURE
