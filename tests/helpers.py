"""Test helpers: services on background event loops, and an independent SMTP client."""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from tlsstorm.common.telemetry import tracer_provider
from tlsstorm.receiver.app import ReceiverService


class Running:
    """A service started in a background thread's event loop; stopped at teardown."""

    def __init__(self, service) -> None:
        self.service = service
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(service.start())

    def call(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        self.call(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"


def wait_for(condition, timeout: float = 10):
    """What `condition()` returns once it is true, polled until `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return found


def exporting_to(collector_url: str, start_receiver, start_sender):
    """A receiver and a sender whose real OTLP/HTTP exporters send to the collector."""
    endpoint = f"{collector_url}/v1/traces"
    receiver = start_receiver(provider=tracer_provider(
        "tlsstorm-receiver", exporter=OTLPSpanExporter(endpoint=endpoint)))
    sender = start_sender(receiver.smtp_port, provider=tracer_provider(
        "tlsstorm-sender", exporter=OTLPSpanExporter(endpoint=endpoint)))
    return receiver, sender


class RunningReceiver(Running):
    service: ReceiverService

    @property
    def smtp_port(self) -> int:
        return self.service.smtp_port

    def stats(self, wave: str | None = None) -> dict:
        params = {"wave": wave} if wave else {}
        return httpx.get(f"{self.http}/v1/stats", params=params).json()

    def wait_sessions(self, count: int, timeout: float = 10) -> dict:
        """Stats once `count` sessions have ended (sessions are counted when they close)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            ended = stats["plain"]["sessions"] + stats["tls"]["sessions"]
            if ended >= count or time.monotonic() > deadline:
                return stats
            time.sleep(0.02)



def deliver(port: int, *, tls: bool, context: ssl.SSLContext | None = None,
            body: bytes = b"Subject: test\r\n\r\nhello\r\n") -> None:
    """One message through Python's stdlib smtplib, an independent client."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        if tls:
            client.starttls(context=context)
            client.ehlo()
        client.sendmail("spammer@client.test", ["victim@receiver.tlsstorm.test"], body)


def read_reply(sock) -> bytes:
    """One complete (possibly multi-line) SMTP reply."""
    reply = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return reply
        reply += chunk
        last_line = reply.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
        if reply.endswith(b"\r\n") and len(last_line) >= 4 and last_line[3:4] == b" ":
            return reply


def read_replies(sock, count: int) -> list[bytes]:
    """`count` complete replies to pipelined commands, however the bytes arrive."""
    buffer, replies, current = b"", [], b""
    while len(replies) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\r\n")
        for line in lines:
            current += line + b"\r\n"
            if line[3:4] != b"-":  # the last line of a reply
                replies.append(current)
                current = b""
    return replies


def after_starttls_220(port: int):
    """A raw socket whose SMTP dialogue is at STARTTLS's 220: the next bytes are TLS."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    read_reply(raw)
    raw.sendall(b"EHLO client.test\r\n")
    read_reply(raw)
    raw.sendall(b"STARTTLS\r\n")
    assert read_reply(raw).startswith(b"220")
    return raw


def serve_up_to_starttls(connection) -> None:
    """The server's side of an SMTP dialogue up to STARTTLS's 220: the next bytes are TLS."""
    connection.sendall(b"220 mx.test ready\r\n")
    connection.recv(4096)  # EHLO
    connection.sendall(b"250-mx.test\r\n250 STARTTLS\r\n")
    connection.recv(4096)  # STARTTLS
    connection.sendall(b"220 go ahead\r\n")


def send_once_to(start_sender, scripted: tuple[socket.socket, threading.Thread], tls: bool,
                 profile: str = "default", host: str = "127.0.0.1", timeout_s: float = 5):
    """A sender aimed at a scripted server (at `host`, its name) sends one message; the sender
    and its answer."""
    server, thread = scripted
    port = server.getsockname()[1]
    sender = start_sender(port, timeout_s=timeout_s, target=f"{host}:{port}")
    try:
        result = httpx.post(f"{sender.http}/v1/send", json={"tls": tls, "profile": profile},
                            timeout=30).json()
    finally:
        thread.join(5)
        server.close()
    return sender, result


def starttls_socket(port: int, context: ssl.SSLContext, session=None) -> ssl.SSLSocket:
    """A raw SMTP dialogue up to a completed STARTTLS handshake, resuming `session` if given."""
    return context.wrap_socket(after_starttls_220(port), server_hostname="receiver.tlsstorm.test",
                               session=session)


def finish_session(tls_sock: ssl.SSLSocket) -> ssl.SSLSession | None:
    """EHLO (which also takes in TLS 1.3 session tickets) and QUIT; the session to resume."""
    tls_sock.sendall(b"EHLO client.test\r\n")
    read_reply(tls_sock)
    session = tls_sock.session
    tls_sock.sendall(b"QUIT\r\n")
    read_reply(tls_sock)
    tls_sock.close()
    return session


@dataclass(frozen=True)
class TcpPacket:
    seconds: float
    source_port: int
    destination_port: int
    seq: int
    ack: int
    flags: int
    payload: int


def tcp_packets(pcap: Path) -> Iterator[TcpPacket]:
    """The IPv4 TCP packets of a pcap file (tcpdump -w, any Linux link type), in order."""
    data = pcap.read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    fraction = 1e-9 if magic in (0xA1B23C4D, 0x4D3CB2A1) else 1e-6
    link_type = struct.unpack_from(endian + "I", data, 20)[0]
    link_header = {1: 14, 113: 16, 276: 20}[link_type]  # Ethernet, Linux SLL, SLL2
    offset = 24
    while offset + 16 <= len(data):
        whole, part, captured = struct.unpack_from(endian + "III", data, offset)
        packet = data[offset + 16: offset + 16 + captured]
        offset += 16 + captured
        ip = packet[link_header:]
        if not ip or ip[0] >> 4 != 4:
            continue
        ip_header = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        tcp = ip[ip_header:]
        source, destination, seq, ack = struct.unpack_from("!HHII", tcp, 0)
        yield TcpPacket(whole + part * fraction, source, destination, seq, ack, tcp[13],
                        total - ip_header - (tcp[12] >> 4) * 4)


def assert_verified_by_one_refused_by_other(verifying: Running, distrusting: Running) -> None:
    """A STARTTLS message through each sender: the one trusting the receiver's CA verifies
    and delivers; the one trusting another CA refuses the certificate and sends nothing."""
    trusted = httpx.post(f"{verifying.http}/v1/send", json={"tls": True}, timeout=30).json()
    refused = httpx.post(f"{distrusting.http}/v1/send", json={"tls": True}, timeout=30).json()

    assert trusted["results"][0]["ok"] is True
    assert trusted["results"][0]["cert_verified"] is True
    assert refused["results"][0]["ok"] is False
    assert "CERTIFICATE_VERIFY_FAILED" in refused["results"][0]["error"]


def postfix_instance_left(name: str) -> list[str]:
    """What a stopped Postfix instance of scripts/postfix-instance.sh left on the host (nothing,
    so that the next run starts as on a fresh machine)."""
    return [path for path in (f"/etc/{name}", f"/var/spool/{name}", f"/var/lib/{name}",
                              f"/var/log/{name}.log") if Path(path).exists()]


CHECKOUT = Path(__file__).resolve().parents[1]


def package_copy(tmp_path: Path) -> Path:
    """The package (its compiled engine too) copied to tmp_path/services, for a test to change
    and run tests against (pytest_against) while the checkout stays as it is."""
    root = tmp_path / "services"
    shutil.copytree(CHECKOUT / "services" / "tlsstorm", root / "tlsstorm",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return root


def pytest_against(copy: Path, *selection: str, env: dict[str, str] | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess:
    """The selected tests against a package_copy: it comes first on PYTHONPATH, for pytest and
    for every service it starts."""
    env = {**os.environ, "PYTHONPATH": f"{copy}{os.pathsep}{CHECKOUT}",
           "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *selection],
        cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=timeout)


def replace_once(path: Path, original: str, replacement: str) -> None:
    """A line of a copy changed on purpose (a mutant, a planted bug); `original` must be there
    exactly once, or what plants it no longer plants anything."""
    text = path.read_text()
    assert text.count(original) == 1, f"{path} no longer has the line"
    path.write_text(text.replace(original, replacement))
