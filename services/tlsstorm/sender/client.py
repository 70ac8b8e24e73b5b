"""One SMTP connection carrying one or more messages, plain or STARTTLS, measured per message."""

from __future__ import annotations

import collections
import time
from dataclasses import asdict, dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from tlsstorm.common import attributes as attr
from tlsstorm.common.config import SenderSettings
from tlsstorm.common.telemetry import traceparent_of
from tlsstorm.common.tls import (
    ResumingSSLObject,
    TimedSSLObject,
    client_context,
    resuming,
)
from tlsstorm.common.wire import wire_bytes
from tlsstorm.sender.allowlist import Target
from tlsstorm.sender.message import build_message
from tlsstorm.sender.profiles import PROFILES, profile_context
from tlsstorm.sender.smtp_wire import Plan, SmtpReplyError, SmtpWire, StartTlsNotOffered, converse


@dataclass(slots=True)
class MessageResult:
    """What one message cost the sender; the connection's set-up is charged to its first."""

    ok: bool
    tls: bool
    code: int | None = None
    reply: str | None = None
    size: int = 0
    connect_ms: float | None = None
    handshake_ms: float | None = None
    total_ms: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    tls_version: str | None = None
    cipher: str | None = None
    tls_resumed: bool | None = None
    cert_verified: bool | None = None
    tls_refused: bool = False  # the server answered STARTTLS 454; the message went plain
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class _Phase:
    name: str
    started_ns: int
    ended_ns: int = 0


@dataclass(slots=True)
class _Checkpoint:
    perf_ns: int
    wall_ns: int
    received: int
    sent: int
    phases: list[_Phase] = field(default_factory=list)


class SendTotals:
    """Running sums for /metrics, updated once per connection."""

    def __init__(self) -> None:
        self.messages: collections.Counter[tuple[str, str]] = collections.Counter()
        self.wire_bytes: collections.Counter[tuple[str, str]] = collections.Counter()

    def add(self, tls: bool, results: list[MessageResult]) -> None:
        mode = "tls" if tls else "plain"
        for result in results:
            self.messages[mode, "ok" if result.ok else "failed"] += 1
            self.wire_bytes[mode, "out"] += result.bytes_sent
            self.wire_bytes[mode, "in"] += result.bytes_received


class SmtpClient:
    """Holds what every connection reuses: the TLS context, names, the tracer."""

    def __init__(self, settings: SenderSettings, provider: TracerProvider | None = None) -> None:
        self.settings = settings
        self.verify = settings.ca_file is not None
        self.resuming_context = resuming(client_context(settings.ca_file))
        self.profile_contexts = {name: profile_context(name, settings.ca_file)
                                 for name in PROFILES}
        self.tracer = provider.get_tracer("tlsstorm.sender") if provider else None
        self.totals = SendTotals()
        self.helo_name = settings.helo_name.encode("ascii")
        self.mail_from = settings.mail_from.encode("ascii")
        self.rcpt_to = settings.rcpt_to.encode("ascii")

    async def send(
        self, target: Target, tls: bool, count: int, size: int, wave_id: str | None = None,
        resume: bool = False, profile: str = "default",
    ) -> list[MessageResult]:
        """Send `count` messages over one connection; one result per message, failed or not.

        With `resume`, the TLS handshake offers the session of the previous connection to the
        same server (tickets), as a resuming client would. `profile` is the client's TLS
        personality (sender/profiles.py).
        """
        context = self.resuming_context if resume else self.profile_contexts[profile]
        session = _Session(self, target, tls, wave_id, context, PROFILES[profile].sni)
        results = await session.run(count, size)
        self.totals.add(tls, results)
        return results


class _Session:
    """Measures one connection's conversation (the SmtpWire's listener), message by message."""

    def __init__(self, client: SmtpClient, target: Target, tls: bool, wave_id: str | None,
                 tls_context, sni: bool) -> None:
        self.client = client
        self.tls_context = tls_context
        self.sni = sni  # name the server in the ClientHello
        self.settings = client.settings
        self.target = target
        self.tls = tls
        self.wave_id = wave_id
        self.results: list[MessageResult] = []
        self.wire: SmtpWire | None = None
        self.connect_ms: float | None = None
        self.trace_commands = client.tracer is not None and self.settings.trace_commands
        self.count = self.size = self.message_size = 0
        self.span: trace.Span | None = None
        self.last: MessageResult | None = None  # the last message waits for QUIT
        self.final: _Checkpoint | None = None
        self.mark: _Checkpoint = self._checkpoint()

    @property
    def ssl_object(self) -> TimedSSLObject | None:
        """The connection's TLS, once its handshake has completed (a failed one says none)."""
        ssl_object = self.wire.ssl_object if self.wire is not None else None
        if ssl_object is None or ssl_object.handshake_ms is None:
            return None
        return ssl_object

    def _checkpoint(self) -> _Checkpoint:
        counted = wire_bytes(self.wire.socket) if self.wire is not None else None
        received, sent = counted or (0, 0)
        return _Checkpoint(time.perf_counter_ns(), time.time_ns(), received, sent)

    # -- what the wire tells us -------------------------------------------------------------

    def phase(self, name: str, started_ns: int, ended_ns: int) -> None:
        """One SMTP command, timed as a phase (a span of its own) when commands are traced."""
        self.mark.phases.append(_Phase(name, started_ns, ended_ns))

    def greeted(self) -> None:
        self.connect_ms = (time.perf_counter_ns() - self.mark.perf_ns) / 1e6

    def message_body(self, index: int) -> bytes:
        """The next message, built as its DATA is accepted; its span starts where it began."""
        if index:
            self.span = self._start_span()
        traceparent = traceparent_of(self.span) if self.span is not None else None
        settings = self.settings
        message = build_message(self.size, settings.mail_from, settings.rcpt_to, traceparent,
                                self.wave_id)
        self.message_size = len(message)
        return message

    def message_accepted(self, index: int, code: int, reply: str) -> None:
        result = MessageResult(ok=True, tls=self.tls, code=code, reply=reply,
                               size=self.message_size)
        if index == self.count - 1:
            self.last = result  # QUIT is charged to the last message
            return
        self._close_message(result, self.span)
        self.span = None

    def ending(self) -> None:
        """The last count of bytes, taken before the socket closes."""
        self.final = self._checkpoint()

    # -- the connection ---------------------------------------------------------------------

    async def run(self, count: int, size: int) -> list[MessageResult]:
        self.count, self.size = count, size
        self.span = self._start_span()
        settings, client = self.settings, self.client
        plan = Plan(client.helo_name, client.mail_from, client.rcpt_to, count,
                    self.tls_context if self.tls else None,
                    self.target.host if self.sni else None)
        self.wire = SmtpWire(plan, self, settings.timeout_s, quick_ack=settings.quick_ack,
                             trace_phases=self.trace_commands)
        failure: Exception | None = None
        try:
            await converse(self.target.address, self.target.port, self.wire, settings.timeout_s)
        except (SmtpReplyError, StartTlsNotOffered, OSError, TimeoutError) as error:
            failure = error
        if self.last is not None:  # every message is in, whatever became of QUIT
            self._close_message(self.last, self.span)
            if isinstance(self.ssl_object, ResumingSSLObject):
                self.ssl_object.remember_session()
        elif failure is not None:
            self._close_message(self._failed_result(failure, size), self.span)
        while len(self.results) < count:
            self.results.append(MessageResult(ok=False, tls=self.tls, size=size,
                                              error=f"not sent: {_describe(failure)}"))
        return self.results

    def _start_span(self) -> trace.Span | None:
        tracer = self.client.tracer
        if tracer is None:
            return None
        return tracer.start_span(attr.SPAN_SEND, kind=SpanKind.CLIENT, start_time=self.mark.wall_ns)

    def _failed_result(self, failure: BaseException, size: int) -> MessageResult:
        code = getattr(failure, "code", None)
        reply = getattr(failure, "message", None)
        return MessageResult(ok=False, tls=self.tls, code=code if isinstance(code, int) else None,
                             reply=reply if isinstance(reply, str) else None, size=size,
                             error=_describe(failure))

    def _close_message(self, result: MessageResult, span: trace.Span | None) -> None:
        """Charge the interval since the last checkpoint to this message and start a new one."""
        first = not self.results
        result.tls_refused = self.wire is not None and self.wire.tls_refused
        previous, now = self.mark, self.final or self._checkpoint()
        result.total_ms = (now.perf_ns - previous.perf_ns) / 1e6
        result.bytes_received = now.received - previous.received
        result.bytes_sent = now.sent - previous.sent
        if first:
            result.connect_ms = self.connect_ms
        if self.ssl_object is not None:
            result.tls_version = self.ssl_object.version()
            cipher = self.ssl_object.cipher()
            result.cipher = cipher[0] if cipher else None
            result.tls_resumed = self.ssl_object.session_reused
            result.cert_verified = self.client.verify
            if first:
                result.handshake_ms = self.ssl_object.handshake_ms
        self.results.append(result)
        if span is not None:
            self._finish_span(span, result, previous, now, first)
        self.mark = now

    def _finish_span(self, span, result: MessageResult, previous: _Checkpoint,
                     now: _Checkpoint, first: bool) -> None:
        target = self.target
        span.set_attributes({
            attr.SERVER_ADDRESS: target.host,
            attr.SERVER_PORT: target.port,
            "network.peer.address": target.address,
            attr.NETWORK_TRANSPORT: "tcp",
            attr.NETWORK_PROTOCOL_NAME: "smtp",
            attr.MODE: "starttls" if self.tls else "plain",
            attr.MESSAGE_BYTES: result.size,
            attr.WIRE_BYTES_OUT: result.bytes_sent,
            attr.WIRE_BYTES_IN: result.bytes_received,
        })
        if result.code is not None:
            span.set_attribute(attr.SMTP_REPLY_CODE, result.code)
        if self.wave_id:
            span.set_attribute(attr.WAVE_ID, self.wave_id)
        if result.tls_version:
            span.set_attributes({
                attr.TLS_ESTABLISHED: True,
                attr.TLS_PROTOCOL_NAME: "tls",
                attr.TLS_PROTOCOL_VERSION: attr.tls_version_number(result.tls_version),
                attr.TLS_CIPHER: result.cipher or "",
                attr.TLS_RESUMED: bool(result.tls_resumed),
                attr.CERT_VERIFIED: bool(result.cert_verified),
            })
        if not result.ok:
            span.set_status(Status(StatusCode.ERROR, result.error or "failed"))
            span.set_attribute(attr.ERROR_TYPE, (result.error or "error").split(":")[0])
        context = trace.set_span_in_context(span)
        tracer = self.client.tracer
        for phase in previous.phases:
            if phase.ended_ns:
                tracer.start_span(phase.name, context=context, start_time=phase.started_ns
                                  ).end(end_time=phase.ended_ns)
        if first and self.ssl_object is not None:
            started = self.ssl_object.handshake_started_ns
            handshake = tracer.start_span(
                attr.SPAN_HANDSHAKE, context=context, start_time=started,
                attributes=attr.handshake_attributes(
                    "client", True, result.tls_version, result.cipher, bool(result.tls_resumed),
                    self.wave_id))
            handshake.end(end_time=started + int(self.ssl_object.handshake_ms * 1e6))
        span.end(end_time=now.wall_ns)


def _describe(failure: BaseException | None) -> str:
    if isinstance(failure, SmtpReplyError):
        return f"smtp_{failure.code}: {failure.message}"
    return f"{type(failure).__name__}: {failure}"
