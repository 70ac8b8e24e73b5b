"""One SMTP connection carrying one or more messages, plain or STARTTLS, measured per message.

The conversation itself is held by the compiled engine (sender/engine.py); this module says
what to send, and turns the engine's report into each message's result and spans.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tlsstorm.common import attributes as attr
from tlsstorm.common.config import SenderSettings
from tlsstorm.common.telemetry import (
    UNSET_STATUS,
    CountedTracerProvider,
    SpanRecorder,
    choose_ids,
    span_counts_of,
)
from tlsstorm.common.tls import client_context
from tlsstorm.sender.allowlist import Target
from tlsstorm.sender.engine import (
    Conversation,
    Engine,
    Report,
    Schedule,
    connections_ahead,
    key_log_from_environment,
    load_problem,
    next_group,
)
from tlsstorm.sender.message import message_parts
from tlsstorm.sender.profiles import PROFILES, engine_tls, profile_context
from tlsstorm.sender.reference_engine import ReferenceEngine

SEND_IN_ORDER_AHEAD = 32  # a bot's list goes to the engine this many connections at a time


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
    ended_ns: int


@dataclass(slots=True)
class _Checkpoint:
    perf_ns: int
    wall_ns: int
    received: int
    sent: int
    phases: list[_Phase] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Handshake:
    version: str
    cipher: str | None
    resumed: bool
    started_wall_ns: int
    ms: float


@dataclass(frozen=True, slots=True)
class EngineChoice:
    """Which engine holds the conversations, and why (said at start, on /v1/stats, in a wave's
    limit)."""

    name: str  # "native" or "reference"
    why: str

    @property
    def native(self) -> bool:
        return self.name == "native"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "why": self.why}


def choose_engine(wanted: str) -> EngineChoice:
    """The engine TLSSTORM_SENDER_ENGINE asks for; with `auto`, the native one unless it cannot
    be loaded (an install without a C compiler or cargo); raises OSError when `native` is asked
    for and cannot be."""
    if wanted == "reference":
        return EngineChoice("reference", "aiosmtplib, as TLSSTORM_SENDER_ENGINE=reference asks")
    problem = load_problem()
    if problem is None:
        return EngineChoice("native", "the compiled engine (C, with OpenSSL and rustls)")
    if wanted == "native":
        raise OSError(f"TLSSTORM_SENDER_ENGINE=native, but {problem}")
    return EngineChoice("reference", f"aiosmtplib, because the native engine cannot be used "
                        f"({problem}); it costs several times the native engine's CPU per "
                        "message, so this sender is its waves' limit sooner")


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
    """Holds what every connection reuses: the TLS contexts, names, the tracer, the engine."""

    def __init__(self, settings: SenderSettings,
                 provider: CountedTracerProvider | None = None) -> None:
        self.settings = settings
        self.verify = settings.ca_file is not None
        self.engine_choice = choose_engine(settings.engine)
        # Its own context, so that the engine keeps resumed sessions apart from the others.
        self.resuming_context = client_context(settings.ca_file)
        if self.engine_choice.native:
            key_log_from_environment()  # the engine's OpenSSL sessions (rustls reads it itself)
            self.profile_contexts = {name: engine_tls(name, settings.ca_file)
                                     for name in PROFILES}
        else:
            self.profile_contexts = {name: profile_context(name, settings.ca_file)
                                     for name in PROFILES}
            key_log = os.environ.get("SSLKEYLOGFILE")
            for context in (self.resuming_context, *self.profile_contexts.values()):
                context.keylog_filename = key_log  # what ssl.create_default_context would do
        self.spans = provider.recorder("tlsstorm.sender") if provider else None
        self.telemetry = span_counts_of(provider)  # what building and exporting spans cost
        self.totals = SendTotals()
        self.helo_name = settings.helo_name.encode("ascii")
        self.mail_from = settings.mail_from.encode("ascii")
        self.rcpt_to = settings.rcpt_to.encode("ascii")
        self._engine: Engine | ReferenceEngine | None = None

    @property
    def engine(self) -> Engine | ReferenceEngine:
        """Made on first use, on the event loop that will drive it."""
        if self._engine is None:
            self._engine = Engine() if self.engine_choice.native else ReferenceEngine()
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    async def send(
        self, target: Target, tls: bool, count: int, size: int, wave_id: str | None = None,
        resume: bool = False, profile: str = "default",
    ) -> list[MessageResult]:
        """Send `count` messages over one connection; one result per message, failed or not.

        With `resume`, the TLS handshake offers the session of the previous connection to the
        same server (tickets), as a resuming client would. `profile` is the client's TLS
        personality (sender/profiles.py).
        """
        return await self.send_in_order(target, [(tls, profile, count)], size, wave_id=wave_id,
                                        resume=resume)

    async def send_in_order(
        self, target: Target, connections: list[tuple[bool, str, int]], size: int,
        wave_id: str | None = None, resume: bool = False,
    ) -> list[MessageResult]:
        """Connections (STARTTLS or not, profile, messages) one after another, as one bot
        works down its list: the engine begins each when the one before has ended. They are
        handed over a window at a time (BYTES_AHEAD of messages at most), and the event loop
        wakes once per half window, not per connection. The results in order. With `resume`,
        each offers the session the one before it left."""
        engine = self.engine  # not a new one, should the sender stop meanwhile
        results: list[list[MessageResult]] = [[] for _ in connections]
        window = connections_ahead(size, connections[0][2], SEND_IN_ORDER_AHEAD)
        group = next_group()
        quiet, loud = (Schedule(0, group, 1, queue=True, quiet=flag) for flag in (True, False))
        left, handed = len(connections), 0
        all_in = asyncio.get_running_loop().create_future()

        def hand_over() -> None:
            nonlocal handed
            while handed < len(connections) and handed - (len(connections) - left) < window:
                index = handed
                tls, profile, count = connections[index]
                wakes = (index + 1) % max(1, window // 2) == 0 or index == len(connections) - 1
                handed += 1
                self.submit(target, tls, count, size, loud if wakes else quiet,
                            lambda report, got, index=index: done(index, report, got),
                            wave_id=wave_id, resume=resume, profile=profile)

        def done(index: int, report: Report, connection_results: list[MessageResult]) -> None:
            nonlocal left
            results[index] = connection_results
            left -= 1
            if report.get("cancelled"):  # the engine is closing (the sender stops)
                all_in.cancel()
            elif not left:
                if not all_in.done():
                    all_in.set_result(None)
            elif not all_in.done():
                hand_over()

        hand_over()
        try:
            if left:
                await all_in
        except asyncio.CancelledError:  # the caller went away: the rest are not sent
            engine.cancel(group)
            raise
        return [result for connection_results in results for result in connection_results]

    def submit(
        self, target: Target, tls: bool, count: int, size: int, schedule: Schedule,
        on_done: Callable[[Report, list[MessageResult]], None], wave_id: str | None = None,
        resume: bool = False, profile: str = "default",
    ) -> None:
        """`send` in a group: handed to the engine now, sent as `schedule` says (or skipped).
        `on_done` gets the engine's report and the results (none when the report says skipped
        or cancelled) once the reports are taken (engine.take, or the group's last ended)."""
        session = _Session(self, target, tls, wave_id)
        talk = session.conversation(count, size, profile, resume)

        def done(report: Report) -> None:
            if report.get("skipped") or report.get("cancelled"):
                on_done(report, [])
                return
            results = session.results_of(report)
            self.totals.add(tls, results)
            on_done(report, results)

        try:
            self.engine.start(talk, done, schedule)
        except OSError as error:
            done(session.no_socket(error))


class _Session:
    """One connection: what to send, then the engine's report as each message's result."""

    def __init__(self, client: SmtpClient, target: Target, tls: bool,
                 wave_id: str | None) -> None:
        self.client = client
        self.settings = client.settings
        self.target = target
        self.tls = tls
        self.wave_id = wave_id
        self.results: list[MessageResult] = []
        self.handshake: _Handshake | None = None
        self.tls_refused = False
        self.connect_ms: float | None = None
        self.trace_commands = client.spans is not None and self.settings.trace_commands
        # The spans are recorded when the report comes, under the span current now.
        self.current = trace.get_current_span().get_span_context()
        self.parent = self.current if client.spans is not None and self.current.is_valid else None
        self.ids: list[tuple[int, int]] = []
        self.sizes: list[int] = []
        self.count = self.size = 0

    def conversation(self, count: int, size: int, profile: str, resume: bool) -> Conversation:
        """What the engine is to say, with the messages (and their span ids) made here."""
        client, settings, target = self.client, self.settings, self.target
        context = client.resuming_context if resume else client.profile_contexts[profile]
        sni = PROFILES[profile].sni
        self.count, self.size = count, size
        self.ids = choose_ids(count, self.current) if client.spans is not None else []
        pieces, head_of, text_of, self.sizes = self._messages(self.ids, count, size)
        return Conversation(target.address, target.port, context if self.tls else None,
                            target.host if sni else None, resume, client.helo_name,
                            client.mail_from, client.rcpt_to, pieces, head_of, text_of,
                            settings.timeout_s, settings.quick_ack, self.trace_commands)

    @staticmethod
    def no_socket(error: OSError) -> Report:
        """The report of a connection the engine could not take: nothing was sent."""
        now_ns = time.perf_counter_ns()
        return {"start_ns": now_ns, "start_wall_ns": time.time_ns(), "greeted_ns": 0,
                "tls": None, "tls_refused": False, "accepted": [], "phases": [],
                "failure": {"code": 0, "reply": None,
                            "text": f"{type(error).__name__}: {error}"},
                "final": {"ns": now_ns, "received": 0, "sent": 0}}

    def results_of(self, report: Report) -> list[MessageResult]:
        self._replay(report)
        return self.results

    def _messages(self, ids: list[tuple[int, int]], count: int, size: int
                  ) -> tuple[list[bytes], list[int], list[int], list[int]]:
        """The messages as the engine's pieces, dot-stuffed for DATA: each its own header (with
        its span's traceparent when tracing), texts of one length one shared piece; which
        pieces each message is made of; and each message's size."""
        flags = int(self.current.trace_flags) if self.current.is_valid else 1
        settings = self.settings
        pieces: list[bytes] = []
        text_pieces: dict[bytes, int] = {}
        head_of, text_of, sizes = [], [], []
        for index in range(count):
            traceparent = (f"00-{ids[index][0]:032x}-{ids[index][1]:016x}-{flags:02x}"
                           if ids else None)
            head, text = message_parts(size, settings.mail_from, settings.rcpt_to, traceparent,
                                       self.wave_id)
            sizes.append(len(head) + len(text))
            head_of.append(len(pieces))
            pieces.append(_dot_stuffed(head))
            if text not in text_pieces:
                text_pieces[text] = len(pieces)
                stuffed = _dot_stuffed(text)
                pieces.append(stuffed if not text or stuffed.endswith(b"\r\n")
                              else stuffed + b"\r\n")
            text_of.append(text_pieces[text])
        return pieces, head_of, text_of, sizes

    def _replay(self, report: Report) -> None:
        """The engine's marks as this session's checkpoints, message by message."""
        ids, sizes, count, size = self.ids, self.sizes, self.count, self.size
        start_ns, start_wall_ns = report["start_ns"], report["start_wall_ns"]

        def checkpoint(mark: dict[str, int], phases: list[_Phase]) -> _Checkpoint:
            return _Checkpoint(mark["ns"], start_wall_ns + mark["ns"] - start_ns,
                               mark["received"], mark["sent"], phases)

        handshake = report["tls"]
        if handshake is not None:
            self.handshake = _Handshake(
                handshake["version"], handshake["cipher"] or None, handshake["resumed"],
                start_wall_ns + handshake["started_ns"] - start_ns,
                (handshake["ended_ns"] - handshake["started_ns"]) / 1e6)
        self.tls_refused = report["tls_refused"]
        if report["greeted_ns"]:
            self.connect_ms = (report["greeted_ns"] - start_ns) / 1e6
        phases: list[list[_Phase]] = [[] for _ in range(count)]
        for name, message, started, ended in report["phases"]:
            phases[message].append(_Phase(name, start_wall_ns + started - start_ns,
                                          start_wall_ns + ended - start_ns))
        mark = _Checkpoint(start_ns, start_wall_ns, 0, 0, phases[0])
        final = checkpoint(report["final"], [])
        accepted = report["accepted"]
        for index, message in enumerate(accepted):
            result = MessageResult(ok=True, tls=self.tls, code=message["code"],
                                   reply=_text(message["reply"]), size=sizes[index])
            last = index == count - 1  # QUIT is charged to the last message
            now = final if last else checkpoint(message["at"], phases[index + 1])
            self._close_message(result, mark, now, ids[index] if ids else None)
            mark = now
        failure = report["failure"]
        why = _text(failure["text"]) if failure else "the connection ended"
        if failure is not None and len(accepted) < count:
            reply = failure["reply"]
            result = MessageResult(ok=False, tls=self.tls, code=failure["code"] or None,
                                   reply=_text(reply) if reply is not None else None,
                                   size=size, error=why)
            self._close_message(result, mark, final, ids[len(accepted)] if ids else None)
        while len(self.results) < count:
            self.results.append(MessageResult(ok=False, tls=self.tls, size=size,
                                              error=f"not sent: {why}"))

    def _close_message(self, result: MessageResult, previous: _Checkpoint, now: _Checkpoint,
                       span_ids: tuple[int, int] | None) -> None:
        """Charge the interval between two checkpoints to this message."""
        first = not self.results
        result.tls_refused = self.tls_refused
        result.total_ms = (now.perf_ns - previous.perf_ns) / 1e6
        result.bytes_received = now.received - previous.received
        result.bytes_sent = now.sent - previous.sent
        if first:
            result.connect_ms = self.connect_ms
        handshake = self.handshake
        if handshake is not None:
            result.tls_version = handshake.version
            result.cipher = handshake.cipher
            result.tls_resumed = handshake.resumed
            result.cert_verified = self.client.verify
            if first:
                result.handshake_ms = handshake.ms
        self.results.append(result)
        if span_ids is not None:
            self.client.spans.defer_soon(_message_spans, self, span_ids, result, previous, now,
                                         handshake if first else None)


def _message_spans(spans: SpanRecorder, session: _Session, span_ids: tuple[int, int],
                   result: MessageResult, previous: _Checkpoint, now: _Checkpoint,
                   handshake: _Handshake | None) -> None:
    """The message's span, with the ids its traceparent header carried (built later, on
    the exporter's thread: see SpanRecorder.defer)."""
    target = session.target
    attributes = {
        attr.SERVER_ADDRESS: target.host,
        attr.SERVER_PORT: target.port,
        "network.peer.address": target.address,
        attr.NETWORK_TRANSPORT: "tcp",
        attr.NETWORK_PROTOCOL_NAME: "smtp",
        attr.MODE: "starttls" if session.tls else "plain",
        attr.MESSAGE_BYTES: result.size,
        attr.WIRE_BYTES_OUT: result.bytes_sent,
        attr.WIRE_BYTES_IN: result.bytes_received,
    }
    if result.code is not None:
        attributes[attr.SMTP_REPLY_CODE] = result.code
    if session.wave_id:
        attributes[attr.WAVE_ID] = session.wave_id
    if result.tls_version:
        attributes[attr.TLS_ESTABLISHED] = True
        attributes[attr.TLS_PROTOCOL_NAME] = "tls"
        attributes[attr.TLS_PROTOCOL_VERSION] = attr.tls_version_number(result.tls_version)
        attributes[attr.TLS_CIPHER] = result.cipher or ""
        attributes[attr.TLS_RESUMED] = bool(result.tls_resumed)
        attributes[attr.CERT_VERIFIED] = bool(result.cert_verified)
    status = UNSET_STATUS
    if not result.ok:
        status = Status(StatusCode.ERROR, result.error or "failed")
        attributes[attr.ERROR_TYPE] = (result.error or "error").split(":")[0]
    span = spans.record(attr.SPAN_SEND, session.parent, SpanKind.CLIENT, previous.wall_ns,
                        now.wall_ns, attributes, status=status, ids=span_ids)
    for phase in previous.phases:
        spans.record(phase.name, span, SpanKind.INTERNAL, phase.started_ns, phase.ended_ns,
                     {})
    if handshake is not None:
        spans.record(attr.SPAN_HANDSHAKE, span, SpanKind.INTERNAL,
                     handshake.started_wall_ns,
                     handshake.started_wall_ns + int(handshake.ms * 1e6),
                     attr.handshake_attributes("client", True, result.tls_version,
                                               result.cipher, bool(result.tls_resumed),
                                               session.wave_id))


def _text(engine_text: str) -> str:
    """The engine writes bytes above 0x7f as code points below 256: back to UTF-8 text."""
    if engine_text.isascii():
        return engine_text
    return engine_text.encode("latin-1").decode("utf-8", "replace")


def _dot_stuffed(lines: bytes) -> bytes:
    """Lines starting with '.' doubled for DATA (RFC 5321 4.5.2); `lines` begin at a line's
    start (a message's header, or its text after the header's blank line)."""
    if lines.startswith(b".") or b"\n." in lines:
        lines = lines.replace(b"\n.", b"\n..")
        if lines.startswith(b"."):
            lines = b"." + lines
    return lines
