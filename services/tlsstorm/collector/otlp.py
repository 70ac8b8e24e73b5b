"""OTLP/HTTP trace requests in and responses out, as the OTLP specification says."""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class OtlpError(Exception):
    """A request the collector refuses, with the HTTP status OTLP prescribes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_WINDOW_BITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True, slots=True)
class Encoding:
    media_type: str
    compression: str | None  # "gzip", "deflate" or None


def encoding_of(content_type: str | None, content_encoding: str | None) -> Encoding:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in (PROTOBUF, JSON):
        raise OtlpError(415, f"content type {media_type or 'none'!r} is not OTLP: send "
                             f"{PROTOBUF} or {JSON}")
    coding = (content_encoding or "identity").strip().lower()
    if coding not in ("identity", *_WINDOW_BITS):
        raise OtlpError(415, f"content encoding {coding!r} is not supported: use gzip, "
                             "deflate or none")
    return Encoding(media_type, None if coding == "identity" else coding)


def _inflate(body: bytes, compression: str, limit: int) -> bytes:
    """Decompress at most `limit` bytes, so a small bomb cannot take the memory."""
    inflater = zlib.decompressobj(wbits=_WINDOW_BITS[compression])
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise OtlpError(400, f"body is not valid {compression}: {error}") from None
    if len(plain) > limit or inflater.unconsumed_tail:
        raise OtlpError(413, f"decompressed body exceeds {limit} bytes")
    if not inflater.eof:
        raise OtlpError(400, f"{compression} body is truncated")
    return plain


def _hex_ids_to_base64(node: object) -> None:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping expects base64 for bytes."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError:
                    raise OtlpError(400, f"{key} {value[:40]!r} is not hex") from None
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


def decode(body: bytes, encoding: Encoding, limit: int) -> ExportTraceServiceRequest:
    if encoding.compression:
        body = _inflate(body, encoding.compression, limit)
    request = ExportTraceServiceRequest()
    if encoding.media_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RecursionError) as error:
            raise OtlpError(400, f"body is not an OTLP protobuf trace request: {error}") from None
        return request
    try:
        document = json.loads(body)
        _hex_ids_to_base64(document)
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except OtlpError:
        raise
    except (ValueError, RecursionError, json_format.ParseError, TypeError) as error:
        raise OtlpError(400, f"body is not an OTLP/JSON trace request: {error}") from None
    return request


def encode_response(encoding: Encoding, rejected_spans: int = 0, message: str = "") -> bytes:
    response = ExportTraceServiceResponse()
    if rejected_spans:
        response.partial_success.rejected_spans = rejected_spans
        response.partial_success.error_message = message
    if encoding.media_type == PROTOBUF:
        return response.SerializeToString()
    return json_format.MessageToJson(response, indent=None).encode()
