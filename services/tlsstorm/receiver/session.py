"""What the receiver records about one SMTP session, and the CPU meter that fills it in."""

from __future__ import annotations

import asyncio
import collections.abc
import ipaddress
import time
from dataclasses import dataclass
from typing import Any

_thread_cpu_ns = time.thread_time_ns


@dataclass(slots=True)
class SessionLimits:
    """Limits shared by every session of one receiver, and what is in use of them."""

    max_connections: int
    max_handshakes: int
    max_recipients: int
    # Pre-TLS policy, as postscreen-like defences apply it to known spam sources.
    refuse_starttls_from: tuple = ()
    reject_from: tuple = ()
    open_sessions: int = 0
    handshakes: int = 0

    @staticmethod
    def _listed(address: str, networks: tuple) -> bool:
        if not networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    def refuses_starttls(self, address: str) -> bool:
        return self._listed(address, self.refuse_starttls_from)

    def rejects(self, address: str) -> bool:
        return self._listed(address, self.reject_from)


class SessionRecord:
    """One connection from accept to close; plain until STARTTLS is issued."""

    __slots__ = (
        "cipher",
        "client_address",
        "client_port",
        "cpu_ns",
        "ended_perf_ns",
        "errors",
        "handshake_ms",
        "handshake_ok",
        "handshake_started_ns",
        "message_bytes",
        "messages",
        "metering",
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
        self.metering = False
        self.quit = False
        self.traceparents: list[str] = []
        self.wave_id: str | None = None

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

    def meter(self, function, *args):
        """Run a callback of this session, adding its thread CPU time to the session."""
        if self.metering:
            return function(*args)
        self.metering = True
        started = _thread_cpu_ns()
        try:
            return function(*args)
        finally:
            self.cpu_ns += _thread_cpu_ns() - started
            self.metering = False


class MeteredCoroutine(collections.abc.Coroutine):
    """Wraps a session's handler coroutine so each step's CPU time is charged to the session.

    The event loop runs many sessions interleaved on one thread, so process CPU alone
    cannot say which session used it; timing each step of a session's own work can.
    """

    __slots__ = ("_inner", "_record")

    def __init__(self, inner: collections.abc.Coroutine, record: SessionRecord) -> None:
        self._inner = inner
        self._record = record

    def send(self, value):
        return self._record.meter(self._inner.send, value)

    def throw(self, *exception):
        return self._record.meter(self._inner.throw, *exception)

    def close(self) -> None:
        self._inner.close()

    def __await__(self):
        return self._inner.__await__()


class RawTransportProtocol(asyncio.BufferedProtocol):
    """Sits between the socket transport and asyncio's SSLProtocol after STARTTLS.

    It charges TLS record processing (decrypt, handshake) to the session and reads the
    socket's wire counters before asyncio closes it.
    """

    def __init__(self, tls_protocol, record: SessionRecord, on_lost, metered: bool) -> None:
        self._tls = tls_protocol
        self._record = record
        self._on_lost = on_lost
        self._metered = metered

    def connection_made(self, transport) -> None:
        self._tls.connection_made(transport)

    def get_buffer(self, sizehint: int):
        return self._tls.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self._metered:
            self._record.meter(self._tls.buffer_updated, nbytes)
        else:
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
