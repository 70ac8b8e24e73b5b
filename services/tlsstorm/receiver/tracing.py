"""Turns a finished session's record into spans, after the fact, so tracing costs nothing live."""

from __future__ import annotations

from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from tlsstorm.common import attributes as attr
from tlsstorm.common.telemetry import UNSET_STATUS, SpanRecorder, span_context_from_traceparent
from tlsstorm.receiver.session import SessionRecord


def emit_session_spans(
    spans: SpanRecorder, record: SessionRecord, server_address: str, server_port: int,
    chain: str
) -> None:
    """smtp.session (SERVER) under the sender's traceparent, with a tls.handshake child; the
    session's CPU as sealed before (building these is the telemetry account's)."""
    parent = span_context_from_traceparent(record.traceparents[0] if record.traceparents
                                           else None)
    links = tuple(Link(other) for other in map(span_context_from_traceparent,
                                                record.traceparents[1:]) if other is not None)
    attributes = {
        attr.SERVER_ADDRESS: server_address,
        attr.SERVER_PORT: server_port,
        attr.CLIENT_ADDRESS: record.client_address,
        attr.CLIENT_PORT: record.client_port,
        attr.NETWORK_TRANSPORT: "tcp",
        attr.NETWORK_PROTOCOL_NAME: "smtp",
        attr.MODE: "starttls" if record.tls else "plain",
        attr.TLS_ESTABLISHED: bool(record.handshake_ok),
        attr.SMTP_MESSAGES: record.messages,
        attr.MESSAGE_BYTES: record.message_bytes,
        attr.WIRE_BYTES_IN: record.wire_bytes_in,
        attr.WIRE_BYTES_OUT: record.wire_bytes_out,
    }
    if record.wave_id:
        attributes[attr.WAVE_ID] = record.wave_id
    if record.handshake_ok:
        attributes[attr.TLS_PROTOCOL_NAME] = "tls"
        attributes[attr.TLS_PROTOCOL_VERSION] = attr.tls_version_number(record.tls_version)
        attributes[attr.TLS_CIPHER] = record.cipher or ""
        attributes[attr.TLS_RESUMED] = record.resumed
        attributes[attr.CERT_CHAIN] = chain
    if record.gate_decision is not None:
        attributes[attr.GATE_DECISION] = record.gate_decision
        attributes[attr.GATE_RULE] = record.gate_rule or ""
        if record.ja4:
            attributes[attr.TLS_CLIENT_JA4] = record.ja4
    if record.errors:
        attributes[attr.ERROR_TYPE] = record.errors[0]
    attributes[attr.SESSION_CPU_US] = record.cpu_ns // 1000
    status = Status(StatusCode.ERROR, ", ".join(sorted(set(record.errors)))) if record.errors \
        else UNSET_STATUS
    session = spans.record(attr.SPAN_SESSION, parent, SpanKind.SERVER, record.started_ns,
                           record.ended_ns, attributes, links=links, status=status)
    if record.handshake_ok is not None:
        handshake = attr.handshake_attributes(
            "server", bool(record.handshake_ok), record.tls_version, record.cipher,
            record.resumed, record.wave_id)
        handshake[attr.HANDSHAKE_CPU_US] = record.handshake_cpu_ns // 1000
        handshake_ns = int((record.handshake_ms or 0.0) * 1e6)
        spans.record(attr.SPAN_HANDSHAKE, session, SpanKind.INTERNAL,
                     record.handshake_started_ns, record.handshake_started_ns + handshake_ns,
                     handshake, status=UNSET_STATUS if record.handshake_ok
                     else Status(StatusCode.ERROR, record.errors[0]))
