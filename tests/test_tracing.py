"""One trace shows the handshake from both ends: sender's smtp.send is the receiver's parent."""

from __future__ import annotations

import ssl

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.helpers import deliver, starttls_socket, wait_for
from tlsstorm.common.telemetry import tracer_provider


def _traced_stack(start_receiver, start_sender, receiver_settings: dict | None = None,
                  **sender_settings):
    exporter = InMemorySpanExporter()
    receiver_provider = tracer_provider("tlsstorm-receiver", exporter=exporter)
    sender_provider = tracer_provider("tlsstorm-sender", exporter=exporter)
    receiver = start_receiver(provider=receiver_provider, **(receiver_settings or {}))
    sender = start_sender(receiver.smtp_port, provider=sender_provider, **sender_settings)

    def spans(minimum: int):
        receiver.wait_sessions(minimum)
        receiver_provider.force_flush()
        sender_provider.force_flush()
        return exporter.get_finished_spans()

    return receiver, sender, spans


@pytest.fixture
def traced(start_receiver, start_sender):
    """Receiver and sender exporting to one in-memory exporter, with a span per SMTP command."""
    return _traced_stack(start_receiver, start_sender, trace_commands=True)


def _named(spans, name: str, service: str):
    return [s for s in spans if s.name == name and s.resource.attributes["service.name"] == service]


def test_receiver_session_is_child_of_sender_send_and_both_time_the_handshake(traced):
    receiver, sender, spans = traced
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = httpx.post(f"{sender.http}/v1/send", json={"tls": True}, timeout=30,
                          headers={"traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"})
    assert response.status_code == 200

    finished = spans(1)
    (send,) = _named(finished, "smtp.send", "tlsstorm-sender")
    (session,) = _named(finished, "smtp.session", "tlsstorm-receiver")
    handshakes = _named(finished, "tls.handshake", "tlsstorm-sender") + _named(
        finished, "tls.handshake", "tlsstorm-receiver")

    assert f"{send.context.trace_id:032x}" == caller_trace  # the caller's trace continues
    assert send.kind is SpanKind.CLIENT and session.kind is SpanKind.SERVER
    assert session.parent.span_id == send.context.span_id
    assert session.context.trace_id == send.context.trace_id
    client_side, server_side = handshakes
    assert client_side.parent.span_id == send.context.span_id
    assert server_side.parent.span_id == session.context.span_id
    assert session.attributes["tls.protocol.version"] in ("1.2", "1.3")
    assert session.attributes["tlsstorm.mode"] == "starttls"
    assert session.attributes["server.port"] == receiver.smtp_port
    assert session.attributes["tlsstorm.wire.bytes_out"] > 0
    assert send.attributes["tls.established"] is True
    assert {s.name for s in finished if s.parent and s.parent.span_id == send.context.span_id} >= {
        "smtp.connect", "smtp.ehlo", "smtp.starttls", "tls.handshake", "smtp.mail",
        "smtp.rcpt", "smtp.data", "smtp.quit"}
    http_server = [s for s in finished if s.kind is SpanKind.SERVER
                   and s.resource.attributes["service.name"] == "tlsstorm-sender"]
    assert send.parent.span_id in {s.context.span_id for s in http_server}


@pytest.mark.parametrize("profile", ["default", "openssl"])  # rustls, OpenSSL
@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p256"])
@pytest.mark.parametrize("tls_max_version", ["1.2", "1.3"])
def test_both_ends_name_the_same_tls_version_and_cipher_whichever_stack_sends(
    start_receiver, start_sender, profile, key_type, tls_max_version
):
    """The sender reports rustls's sessions in OpenSSL's names, so both ends' spans agree."""
    _, sender, spans = _traced_stack(start_receiver, start_sender, {
        "cert_key_type": key_type, "tls_max_version": tls_max_version})

    result = httpx.post(f"{sender.http}/v1/send", json={"tls": True, "profile": profile},
                        timeout=30).json()["results"][0]
    finished = spans(1)
    (send,) = _named(finished, "smtp.send", "tlsstorm-sender")
    (session,) = _named(finished, "smtp.session", "tlsstorm-receiver")

    assert result["ok"] is True, result
    assert result["tls_version"] == f"TLSv{tls_max_version}"
    for attribute in ("tls.protocol.version", "tls.cipher"):
        assert send.attributes[attribute] == session.attributes[attribute], attribute
    assert send.attributes["tls.cipher"].startswith("TLS_" if tls_max_version == "1.3" else
                                                    "ECDHE-")


def test_by_default_smtp_commands_are_not_spans_of_their_own(start_receiver, start_sender):
    _, sender, spans = _traced_stack(start_receiver, start_sender)
    httpx.post(f"{sender.http}/v1/send", json={"tls": True}, timeout=30)

    finished = spans(1)

    (send,) = _named(finished, "smtp.send", "tlsstorm-sender")
    children = {s.name for s in finished if s.parent and s.parent.span_id == send.context.span_id}
    assert children == {"tls.handshake", "smtp.session"}


def test_plain_send_has_no_handshake_span(traced):
    _, sender, spans = traced
    httpx.post(f"{sender.http}/v1/send", json={"tls": False}, timeout=30)

    finished = spans(1)

    (session,) = _named(finished, "smtp.session", "tlsstorm-receiver")
    assert session.attributes["tlsstorm.mode"] == "plain"
    assert not [s for s in finished if s.name == "tls.handshake"]


def test_session_without_traceparent_starts_its_own_trace(traced, any_cert_context):
    receiver, _, spans = traced
    deliver(receiver.smtp_port, tls=True, context=any_cert_context)

    (session,) = _named(spans(1), "smtp.session", "tlsstorm-receiver")

    assert session.parent is None
    assert session.status.status_code is StatusCode.UNSET


def test_failed_handshake_still_produces_an_error_span(traced):
    receiver, _, spans = traced
    with pytest.raises(ssl.SSLError):
        starttls_socket(receiver.smtp_port, _client_without_common_ciphers())

    finished = spans(1)
    (session,) = _named(finished, "smtp.session", "tlsstorm-receiver")
    (handshake,) = _named(finished, "tls.handshake", "tlsstorm-receiver")

    assert session.status.status_code is StatusCode.ERROR
    assert session.attributes["error.type"] == "handshake_failed"
    assert handshake.status.status_code is StatusCode.ERROR


def _client_without_common_ciphers() -> ssl.SSLContext:
    """A TLS 1.2 client offering only anonymous ciphers, which the receiver never accepts."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("aNULL")
    return context


def test_each_side_shows_what_its_telemetry_cost_apart_from_its_work(traced):
    """Building and exporting spans is each service's telemetry account (/v1/stats, /metrics,
    a wave's figure), not a session's cost: the receiver's process CPU splits into sessions,
    telemetry and the rest."""
    receiver, sender, spans = traced
    wave = httpx.post(f"{sender.http}/v1/waves", timeout=10, json={
        "rate": 100, "count": 20, "tls_ratio": 0.5}).json()
    spans(20)  # built and exported
    # The receiver counts a session when it closes, the sender its wave when the engine's
    # report is in: the wave may finish a moment after the last session.
    wave = wait_for(lambda: (body := httpx.get(f"{sender.http}/v1/waves/{wave['id']}",
                                               timeout=10).json())["status"] != "running"
                    and body)
    sender_stats = httpx.get(f"{sender.http}/v1/stats", timeout=10).json()
    process = receiver.stats()["process"]
    metrics = httpx.get(f"{receiver.http}/metrics", timeout=10).text

    assert wave["status"] == "completed" and wave["sender_telemetry_seconds"] > 0, wave
    assert sender_stats["telemetry"]["building_seconds"] > 0, sender_stats
    assert sender_stats["telemetry"]["exporting_seconds"] > 0, sender_stats
    assert process["telemetry"]["building_seconds"] > 0, process
    assert process["telemetry"]["exporting_seconds"] > 0, process
    assert process["cpu_seconds_charged"] + process["cpu_seconds_telemetry"] + process[
        "cpu_seconds_unattributed"] == pytest.approx(process["cpu_seconds"], abs=1e-5)
    assert 'tlsstorm_telemetry_cpu_seconds_total{part="building"}' in metrics
