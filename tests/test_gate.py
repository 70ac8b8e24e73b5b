"""The ClientHello gate: JA4 as an independent implementation computes it, bot personalities
stopped with an alert before OpenSSL works, real clients let through, and broken hellos
answered with an alert, counted, the receiver serving on."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest

from tests.helpers import after_starttls_220, deliver, send_once_to, serve_up_to_starttls
from tlsstorm.receiver.clienthello import HelloReader
from tlsstorm.sender.profiles import PROFILES, profile_context


def _client_hello(profile: str, sni: str | None, alpn: list[str] | None = None) -> bytes:
    """The first flight a client of that OpenSSL personality sends (no network)."""
    context = profile_context(profile, None)
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing,
                              server_hostname=sni if PROFILES[profile].sni else None)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(("profile", "alpn"), [
    ("openssl", None), ("mta", None), ("bot-tls12", None), ("bot-legacy", None),
    ("openssl", ["smtp"]), ("bot-tls12", ["h2", "http/1.1"])])
def test_ja4_agrees_with_the_ja4plus_implementation(profile, alpn):
    from ja4plus.fingerprinters.ja4 import generate_ja4
    from ja4plus.utils.tls_utils import parse_tls_handshake

    flight = _client_hello(profile, "receiver.tlsstorm.test", alpn)
    ours = HelloReader().feed(flight)

    assert ours is not None
    assert ours.ja4() == generate_ja4(parse_tls_handshake(flight))
    assert (ours.server_name is not None) == PROFILES[profile].sni


def _hello_the_sender_sends(start_sender, profile: str) -> bytes:
    """The first TLS flight the sender's engine sends with that profile, taken by a server
    that speaks SMTP up to STARTTLS's 220 and then only listens."""
    server = socket.create_server(("127.0.0.1", 0))
    flight = bytearray()

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            serve_up_to_starttls(connection)
            while len(flight) < 5 or len(flight) < 5 + int.from_bytes(flight[3:5], "big"):
                piece = connection.recv(65536)
                if not piece:
                    break
                flight.extend(piece)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    _, result = send_once_to(start_sender, (server, thread), tls=True, profile=profile,
                             host="localhost", timeout_s=2)
    assert result["results"][0]["ok"] is False  # the handshake was never answered
    return bytes(flight)


@pytest.mark.parametrize("profile", ["default", "bot-nosni", "openssl", "bot-legacy"])
def test_ja4_of_the_hello_each_sender_stack_sends_agrees_with_ja4plus(start_sender, profile):
    """rustls's hello (default, bot-nosni) and OpenSSL's (openssl, bot-legacy), as the engine
    sends them: the fingerprints agree, the rustls ones differ from OpenSSL's own for the
    same settings, and the OpenSSL ones are the very hello Python's ssl makes."""
    from ja4plus.fingerprinters.ja4 import generate_ja4
    from ja4plus.utils.tls_utils import parse_tls_handshake

    flight = _hello_the_sender_sends(start_sender, profile)
    ours = HelloReader().feed(flight)

    assert ours is not None
    assert ours.ja4() == generate_ja4(parse_tls_handshake(flight))
    assert (ours.server_name == "localhost") == PROFILES[profile].sni
    python_ssl = HelloReader().feed(_client_hello(profile, "localhost")).ja4()
    assert (ours.ja4() == python_ssl) == (PROFILES[profile].stack == "openssl")


def test_a_hello_split_over_records_and_segments_reads_the_same():
    flight = _client_hello("openssl", "receiver.tlsstorm.test")
    message = flight[5:]
    half = len(message) // 2
    reframed = (b"\x16\x03\x01" + half.to_bytes(2, "big") + message[:half]
                + b"\x16\x03\x01" + (len(message) - half).to_bytes(2, "big") + message[half:])
    reader = HelloReader()
    pieces = [reframed[i:i + 7] for i in range(0, len(reframed), 7)]

    results = [reader.feed(piece) for piece in pieces]

    assert all(result is None for result in results[:-1])
    assert results[-1].ja4() == HelloReader().feed(flight).ja4()
    assert bytes(reader.raw) == reframed  # handed on to OpenSSL unchanged


def _gated(start_receiver, start_sender, mode: str):
    receiver = start_receiver(gate_mode=mode, gate_deny_below_tls13=True, session_tickets=False)
    return receiver, start_sender(receiver.smtp_port)


def _send(sender, profile: str, count: int = 3) -> list[dict]:
    return httpx.post(f"{sender.http}/v1/send", timeout=30, json={
        "tls": True, "count": count, "profile": profile}).json()["results"]


def test_enforcing_gate_stops_tls12_bots_with_an_alert_and_lets_tls13_clients_in(
    start_receiver, start_sender
):
    receiver, sender = _gated(start_receiver, start_sender, "enforce")

    bots = _send(sender, "bot-tls12")
    legit = _send(sender, "mta")

    assert not any(result["ok"] for result in bots)
    # The gate's fatal alert reached the client: not a bare close ("unexpected eof").
    assert all("ALERT_ACCESS_DENIED" in (result["error"] or "") for result in bots), bots
    assert all(result["ok"] for result in legit), legit
    stats = receiver.wait_sessions(6)
    assert stats["tls"]["errors"]["handshake_gated"] == 3
    gate = stats["gate"]
    assert {(d["decision"], d["rule"], d["sessions"]) for d in gate["decisions"]} == {
        ("denied", "tls12_only", 3), ("allowed", "default", 3)}
    # The target is an IP address, which no client names in SNI (RFC 6066): "i" both times.
    assert {entry["ja4"][:4] for entry in gate["fingerprints"]} == {"t12i", "t13i"}
    # What a refused handshake cost, against a full one.
    assert stats["tls"]["failed_handshake_cpu_ms_mean"] < stats["tls"]["handshake_cpu_ms_mean"]
    metrics = httpx.get(f"{receiver.http}/metrics").text
    assert 'tlsstorm_gate_sessions_total{decision="denied",rule="tls12_only"} 3.0' in metrics


def test_learning_gate_refuses_nothing_and_counts_what_it_would_deny(
    start_receiver, start_sender
):
    receiver, sender = _gated(start_receiver, start_sender, "learn")

    assert all(result["ok"] for result in _send(sender, "bot-tls12", 2))
    gate = receiver.wait_sessions(2)["gate"]

    assert [(d["decision"], d["rule"]) for d in gate["decisions"]] == [
        ("would_deny", "tls12_only")]


@pytest.mark.skipif((not shutil.which("openssl") or not shutil.which("swaks"))
                    and os.environ.get("CI") != "true",
                    reason="openssl and swaks are Debian packages (make system-deps)")
def test_real_clients_pass_the_gate(start_receiver):
    receiver = start_receiver(gate_mode="enforce", gate_deny_below_tls13=True)
    port = str(receiver.smtp_port)

    openssl = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}",
         "-servername", "receiver.tlsstorm.test", "-brief"],
        input="QUIT\r\n", capture_output=True, text=True, timeout=30)
    swaks = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", port, "--tls", "--to",
         "victim@receiver.tlsstorm.test", "--from", "legit@client.test"],
        capture_output=True, text=True, timeout=30)
    deliver(receiver.smtp_port, tls=True, context=profile_context("openssl", None))

    assert "Protocol version: TLSv1.3" in openssl.stdout + openssl.stderr, openssl.stderr
    assert swaks.returncode == 0, swaks.stdout[-2000:]
    stats = receiver.wait_sessions(3)
    assert "handshake_gated" not in stats["tls"]["errors"]
    assert {d["decision"] for d in stats["gate"]["decisions"]} == {"allowed"}


def _answer(raw: socket.socket) -> bytes:
    """What the receiver sends back before closing (an alert, or nothing)."""
    received = b""
    try:
        while chunk := raw.recv(4096):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    raw.close()
    return received


@pytest.mark.parametrize(("payload", "counted"), [
    (b"hello, is this TLS?\r\n", "hello_malformed"),
    (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", "hello_malformed"),  # a ServerHello
    (b"\x16\x03\x01\xff\xff", "hello_malformed"),  # a record longer than any hello
    (b"".join(b"\x16\x03\x01\x40\x00" + b"\x01" + (0xFFFFFF).to_bytes(3, "big") + bytes(16380)
              for _ in range(3)), "hello_oversized"),
])
def test_broken_hellos_get_an_alert_and_a_count_and_the_receiver_serves_on(
    start_receiver, payload, counted
):
    receiver = start_receiver(gate_mode="enforce")
    raw = after_starttls_220(receiver.smtp_port)

    raw.sendall(payload)
    answer = _answer(raw)

    assert answer[:1] == b"\x15", answer[:20]  # a TLS alert record before the close
    assert answer[5:7] == b"\x02\x32"  # fatal decode_error
    stats = receiver.wait_sessions(1)
    assert stats["tls"]["errors"]["handshake_gated"] == 1
    assert [d["rule"] for d in stats["gate"]["decisions"]] == [counted]
    deliver(receiver.smtp_port, tls=True, context=profile_context("openssl", None))
    assert receiver.wait_sessions(2)["tls"]["messages"] == 1


def test_a_truncated_hello_then_silence_ends_at_the_handshake_deadline(start_receiver):
    receiver = start_receiver(gate_mode="enforce", handshake_timeout_s=1)
    raw = after_starttls_220(receiver.smtp_port)
    flight = _client_hello("openssl", "receiver.tlsstorm.test")

    raw.sendall(flight[:40])
    started = time.monotonic()
    _answer(raw)

    assert time.monotonic() - started < 5
    stats = receiver.wait_sessions(1)
    assert stats["tls"]["handshakes_failed"] == 1


def test_a_mixed_wave_shows_fingerprints_and_decisions_in_the_report(
    start_collector, start_receiver, start_sender
):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from tlsstorm.common.telemetry import tracer_provider

    collector = start_collector()
    endpoint = f"{collector.http}/v1/traces"
    receiver = start_receiver(
        provider=tracer_provider("tlsstorm-receiver", exporter=OTLPSpanExporter(endpoint)),
        gate_mode="enforce", gate_deny_below_tls13=True)
    sender = start_sender(receiver.smtp_port)
    wave = httpx.post(f"{sender.http}/v1/waves", json={
        "rate": 40, "count": 20, "tls_ratio": 1.0,
        "profiles": {"mta": 0.5, "bot-tls12": 0.5}}).json()
    while (state := httpx.get(f"{sender.http}/v1/waves/{wave['id']}").json())["status"] == \
            "running":
        time.sleep(0.1)
    assert state["starttls_by_profile"] == {"mta": 10, "bot-tls12": 10}
    # A refused session never reaches MAIL, so it carries no wave id: all sessions, then.
    deadline = time.monotonic() + 15
    while True:
        summary = httpx.get(f"{collector.http}/v1/summary")
        tls = summary.json()["receiver"]["starttls"] if summary.status_code == 200 else None
        if tls and sum(entry["sessions"] for entry in tls["fingerprints"]) >= 20:
            break
        assert time.monotonic() < deadline, summary.text
        time.sleep(0.2)

    by_prefix = {entry["ja4"][:4]: entry for entry in tls["fingerprints"]}
    assert (by_prefix["t12i"]["sessions"], by_prefix["t12i"]["denied"]) == (10, 10)
    assert (by_prefix["t13i"]["sessions"], by_prefix["t13i"]["denied"]) == (10, 0)
    page = httpx.get(f"{collector.http}/").text
    assert "ClientHello fingerprints" in page and by_prefix["t12i"]["ja4"] in page


@pytest.mark.skipif((not shutil.which("postfix") or os.geteuid() != 0)
                    and os.environ.get("CI") != "true",
                    reason="Debian's postfix and root are needed (make system-deps)")
def test_postfix_relaying_over_tls_passes_the_gate(start_receiver):
    """A real MTA as the legitimate client: Postfix relays into the receiver, TLS required."""
    from pathlib import Path

    script = str(Path(__file__).resolve().parents[1] / "scripts/postfix-relay.sh")
    receiver = start_receiver(gate_mode="enforce", gate_deny_below_tls13=True)
    started = subprocess.run(["bash", script, "start", str(receiver.smtp_port)],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        sent = subprocess.run(["bash", script, "send", "legit@relay.tlsstorm.test",
                               "victim@receiver.tlsstorm.test"],
                              capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        stats = receiver.wait_sessions(1, timeout=60)
    finally:
        subprocess.run(["bash", script, "stop"], timeout=60)

    assert stats["tls"]["messages"] == 1, stats["tls"]
    assert [(d["decision"], d["rule"]) for d in stats["gate"]["decisions"]] == [
        ("allowed", "default")]
    assert stats["gate"]["fingerprints"][0]["ja4"].startswith("t13i")  # no SNI, as Postfix does


def test_a_hello_split_over_records_and_segments_passes_the_gate_whole(start_receiver):
    """The gate hands OpenSSL exactly the bytes it held: a hello in two records, written a
    few bytes at a time, still makes a handshake that completes."""
    receiver = start_receiver(gate_mode="enforce", gate_deny_below_tls13=True)
    raw = after_starttls_220(receiver.smtp_port)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = profile_context("mta", None).wrap_bio(incoming, outgoing,
                                                   server_hostname="receiver.tlsstorm.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    flight = outgoing.read()
    message = flight[5:]
    half = len(message) // 2
    reframed = (b"\x16\x03\x01" + half.to_bytes(2, "big") + message[:half]
                + b"\x16\x03\x01" + (len(message) - half).to_bytes(2, "big") + message[half:])
    for start in range(0, len(reframed), 7):
        raw.sendall(reframed[start:start + 7])
        time.sleep(0.001)
    while True:  # the rest of the handshake over the same socket
        incoming.write(raw.recv(65536))
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                raw.sendall(outgoing.read())
    raw.sendall(outgoing.read())
    raw.close()

    assert client.version() == "TLSv1.3"
    gate = receiver.wait_sessions(1)["gate"]
    assert [(d["decision"], d["rule"]) for d in gate["decisions"]] == [("allowed", "default")]


def test_a_learning_gate_counts_a_broken_hello_as_what_it_would_deny(start_receiver):
    receiver = start_receiver(gate_mode="learn")
    raw = after_starttls_220(receiver.smtp_port)

    raw.sendall(b"hello, is this TLS?\r\n")
    _answer(raw)

    gate = receiver.wait_sessions(1)["gate"]
    assert [(d["decision"], d["rule"]) for d in gate["decisions"]] == [
        ("would_deny", "hello_malformed")]


def _openssl_session(port: int, *sni: str) -> str:
    """openssl s_client through STARTTLS (SNI as given), then QUIT: what it printed."""
    finished = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}", "-brief",
         *sni], input="QUIT\r\n", capture_output=True, text=True, timeout=30)
    return finished.stdout + finished.stderr


def _python_session(port: int) -> bool:
    """Python's ssl (another ClientHello than s_client's; no SNI, as it connects by
    address): delivered or not."""
    try:
        deliver(port, tls=True, context=profile_context("openssl", None))
    except (ssl.SSLError, OSError):
        return False
    return True


@pytest.mark.skipif(not shutil.which("openssl") and os.environ.get("CI") != "true",
                    reason="openssl is a Debian package (make system-deps)")
def test_allow_deny_and_require_sni_rules_with_real_clients(start_receiver):
    """Each rule the README documents, with two real clients whose hellos differ (openssl
    s_client and Python's ssl): the fingerprints learnt first, then deny one, allow only the
    other, and require SNI; each refusal an alert the client saw, each decision counted."""
    sni = ("-servername", "receiver.tlsstorm.test")
    learner = start_receiver(gate_mode="learn")
    assert "Protocol version: TLSv1.3" in _openssl_session(learner.smtp_port, *sni)
    openssl = learner.wait_sessions(1)["gate"]["fingerprints"][0]["ja4"]
    assert _python_session(learner.smtp_port)
    python = next(entry["ja4"] for entry in learner.wait_sessions(2)["gate"]["fingerprints"]
                  if entry["ja4"] != openssl)

    def decisions(receiver) -> set[tuple[str, str]]:
        return {(entry["decision"], entry["rule"])
                for entry in receiver.stats()["gate"]["decisions"]}

    denying = start_receiver(gate_mode="enforce", gate_deny=[openssl])
    assert "alert access denied" in _openssl_session(denying.smtp_port, *sni)
    assert _python_session(denying.smtp_port)
    denying.wait_sessions(2)
    assert decisions(denying) == {("denied", "denylisted"), ("allowed", "default")}

    allowing = start_receiver(gate_mode="enforce", gate_allow=[python])
    assert "alert access denied" in _openssl_session(allowing.smtp_port, *sni)
    assert _python_session(allowing.smtp_port)
    allowing.wait_sessions(2)
    assert decisions(allowing) == {("denied", "not_allowlisted"), ("allowed", "allowlisted")}

    naming = start_receiver(gate_mode="enforce", gate_require_sni=True)
    assert "alert access denied" in _openssl_session(naming.smtp_port, "-noservername")
    assert "Protocol version: TLSv1.3" in _openssl_session(naming.smtp_port, *sni)
    naming.wait_sessions(2)
    assert decisions(naming) == {("denied", "no_sni"), ("allowed", "default")}
