"""What the receiver records about one SMTP session."""

from __future__ import annotations

import asyncio
import time
from typing import Any


class SessionRecord:
    """One connection from accept to close; plain until STARTTLS is issued."""

    __slots__ = (
        "cipher",
        "client_address",
        "client_port",
        "cpu_ns",
        "ended_perf_ns",
        "errors",
        "gate_decision",
        "gate_rule",
        "handshake_cpu_ns",
        "handshake_ms",
        "handshake_ok",
        "handshake_started_ns",
        "ja4",
        "message_bytes",
        "messages",
        "queue_fsyncs",
        "quit",
        "replies",
        "resumed",
        "started_ns",
        "started_perf_ns",
        "tls",
        "tls_version",
        "traceparents",
        "wave_id",
        "wire_bytes_in",
        "wire_bytes_out",
    )

    def __init__(self, peer: Any) -> None:
        self.started_ns = time.time_ns()
        self.started_perf_ns = time.perf_counter_ns()
        self.ended_perf_ns = 0
        if isinstance(peer, tuple):
            self.client_address, self.client_port = peer[0], peer[1]
        else:
            self.client_address, self.client_port = str(peer), 0
        self.tls = False
        self.handshake_ok: bool | None = None
        self.handshake_started_ns = 0
        self.handshake_ms: float | None = None
        self.handshake_cpu_ns = 0
        self.tls_version: str | None = None
        self.cipher: str | None = None
        self.resumed = False
        self.messages = 0
        self.message_bytes = 0
        self.replies: dict[str, int] = {}
        self.wire_bytes_in = 0
        self.wire_bytes_out = 0
        self.errors: list[str] = []
        self.cpu_ns = 0
        self.quit = False
        self.queue_fsyncs = 0
        self.traceparents: list[str] = []
        self.wave_id: str | None = None
        self.ja4: str | None = None  # the ClientHello's fingerprint, when the gate read it
        self.gate_decision: str | None = None  # allowed, denied or would_deny (learning)
        self.gate_rule: str | None = None

    @property
    def mode(self) -> str:
        return "tls" if self.tls else "plain"

    @property
    def duration_ms(self) -> float:
        return (self.ended_perf_ns - self.started_perf_ns) / 1e6

    @property
    def ended_ns(self) -> int:
        return self.started_ns + (self.ended_perf_ns - self.started_perf_ns)

    def note_reply(self, reply: bytes) -> None:
        if reply[3:4] == b"-":  # not the last line of a multi-line reply
            return
        code = reply[:3].decode("ascii", "replace")
        self.replies[code] = self.replies.get(code, 0) + 1
        if code.startswith("5"):
            self.errors.append("protocol_error")


class RawTransportProtocol(asyncio.BufferedProtocol):
    """Sits between the socket transport and asyncio's SSLProtocol after STARTTLS, to read
    the socket's wire counters before asyncio closes it."""

    def __init__(self, tls_protocol, on_lost) -> None:
        self._tls = tls_protocol
        self._on_lost = on_lost

    def connection_made(self, transport) -> None:
        self._tls.connection_made(transport)

    def get_buffer(self, sizehint: int):
        return self._tls.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._tls.buffer_updated(nbytes)

    def eof_received(self):
        return self._tls.eof_received()

    def pause_writing(self) -> None:
        self._tls.pause_writing()

    def resume_writing(self) -> None:
        self._tls.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()
        self._tls.connection_lost(exc)
