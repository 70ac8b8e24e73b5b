"""The sender's reference engine: the same conversations as the compiled one, in pure Python on
aiosmtplib (the design's client library).

Why it exists: it is what the compiled engine (engine.py) is checked against, case by case, in
the differential test (tests/test_reference_engine.py: for every scripted and hostile server,
the same outcome and code); and it sends where the compiled engine could not be built (an
install without a C compiler or cargo), at several times its CPU per message
(bench/client_stack_floor.py), which the sender says at start, on /v1/stats and in a wave's
limit. Same interface (`start`, `cancel`, `take`, `close`), same schedules and the same reports,
so client.py and waves.py do not know which engine they drive.

What differs, as aiosmtplib does it: TLS is always OpenSSL (Python's ssl: a rustls profile
speaks its nearest OpenSSL client, profiles.profile_context); DATA and the message are one
phase; plaintext behind STARTTLS's 220 is discarded (aiosmtplib's defence) rather than refused;
and a reply may have 8 KiB a line, 32 KiB in all (the compiled engine: 64 KiB in all).
asyncio's start_tls takes no session, so a resuming connection's SSLObject offers the one kept
for its server itself (and times the handshake, as the receiver's do).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import aiosmtplib

from tlsstorm.common.tls import TimedSSLObject
from tlsstorm.common.wire import wire_bytes
from tlsstorm.sender.engine import Conversation, Report, Schedule, hand_out

KEPT_REPLY_CHARACTERS = 512  # of a reply's text, what a report keeps (as the compiled engine)
_INVALID_RESPONSE = -1  # aiosmtplib's code for a reply it could not read


class _Ended(Exception):
    """The conversation ends here, for a reason the engine names (not a server's reply)."""

    def __init__(self, kind: str, text: str, code: int = 0) -> None:
        super().__init__(text)
        self.kind, self.text, self.code = kind, text, code


@dataclass(eq=False, slots=True)
class _Connection:
    id: int
    talk: Conversation
    schedule: Schedule | None
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task | None = None


@dataclass(eq=False, slots=True)
class _Group:
    limit: int
    in_flight: int = 0
    waiting: int = 0  # handed over, not yet begun (due later, or queued)
    queued: deque[_Connection] = field(default_factory=deque)


class _SessionOffering(TimedSSLObject):
    """Offers the session kept for its server, if any, when its handshake begins. Each context
    has a subclass of its own (`offering_sessions`): the sessions kept are the context's, as the
    compiled engine keeps them per SSL_CTX and server."""

    sessions: ClassVar[dict[str | None, ssl.SSLSession]]  # set per context

    def do_handshake(self) -> None:
        if not self.handshake_started_perf_ns:
            kept = self.sessions.get(self.server_hostname)
            if kept is not None:
                self.session = kept
        super().do_handshake()


def offering_sessions(context: ssl.SSLContext) -> ssl.SSLContext:
    """The context, its SSLObjects timing their handshakes and offering its kept sessions."""
    if not issubclass(context.sslobject_class, _SessionOffering):
        context.sslobject_class = type("SessionOffering", (_SessionOffering,), {"sessions": {}})
    return context


class _Marks:
    """A connection's clock and the kernel's byte counts at its marks, as the report has them."""

    def __init__(self, talk: Conversation) -> None:
        self.start_ns = self.phase_started_ns = time.perf_counter_ns()
        self.start_wall_ns = time.time_ns()
        self.messages = len(talk.head_of)
        self.trace_phases = talk.trace_phases
        self.sock: socket.socket | None = None
        self.greeted_ns = 0
        self.accepted: list[dict] = []
        self.phases: list[list] = []

    def at(self) -> dict[str, int]:
        received, sent = wire_bytes(self.sock) or (0, 0)
        return {"ns": time.perf_counter_ns(), "received": received, "sent": sent}

    def phase(self, name: str) -> None:
        if not self.trace_phases:
            return
        now = time.perf_counter_ns()
        message = min(len(self.accepted), self.messages - 1)
        self.phases.append([name, message, self.phase_started_ns, now])
        self.phase_started_ns = now


class ReferenceEngine:
    """engine.Engine's interface on the event loop: each connection an aiosmtplib session."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._waiting: dict[int, Callable[[Report], None]] = {}
        self._groups: dict[int, _Group] = {}
        self._unbegun: dict[int, list[_Connection]] = {}  # by group: due later
        self._running: set[_Connection] = set()
        self._finished: list[Report] = []
        self._wake_scheduled = False
        self._closed = False

    def start(self, talk: Conversation, on_report: Callable[[Report], None],
              schedule: Schedule | None = None) -> None:
        """As Engine.start: at once, or as `schedule` says."""
        if self._closed:
            raise OSError("the reference engine is closed")
        connection = _Connection(next(self._ids), talk, schedule)
        self._waiting[connection.id] = on_report
        if schedule is None:
            self._begin(connection)
            return
        group = self._groups.setdefault(schedule.group, _Group(schedule.limit))
        group.waiting += 1
        if schedule.queue:  # begins when the group has room; its due time is not used
            group.queued.append(connection)
            self._work_queue(group)
            return
        delay_s = max(0.0, (schedule.due_ns - time.perf_counter_ns()) / 1e9)
        connection.timer = self._loop.call_later(delay_s, self._due, connection)
        self._unbegun.setdefault(schedule.group, []).append(connection)

    def cancel(self, group: int) -> None:
        """As Engine.cancel: the group's connections not yet begun end as cancelled."""
        dropped = self._unbegun.pop(group, [])
        found = self._groups.get(group)
        if found is not None:
            dropped += found.queued
            found.queued.clear()
        for connection in dropped:
            if connection.timer is not None:
                connection.timer.cancel()
            self._end_unbegun(connection, "cancelled", loud=True)

    def take(self) -> None:
        """Each report waiting goes to its connection's callback."""
        self._wake_scheduled = False
        finished, self._finished = self._finished, []
        hand_out(finished, self._waiting, self._loop)

    def close(self) -> None:
        """Drop every connection in flight (the sender is stopping)."""
        self._closed = True
        for connections in self._unbegun.values():
            for connection in connections:
                connection.timer.cancel()
        for connection in self._running:
            connection.task.cancel()
        self._unbegun.clear()
        self._groups.clear()
        self._running.clear()
        self._finished.clear()
        waiting, self._waiting = self._waiting, {}
        for identifier, on_report in waiting.items():
            on_report({"id": identifier, "cancelled": True})

    # ---- scheduling, as the compiled engine's ----

    def _due(self, connection: _Connection) -> None:
        schedule = connection.schedule
        unbegun = self._unbegun[schedule.group]
        unbegun.remove(connection)
        if not unbegun:
            del self._unbegun[schedule.group]
        group = self._groups[schedule.group]
        if group.in_flight >= group.limit:
            self._end_unbegun(connection, "skipped", loud=not schedule.quiet)
            return
        group.waiting -= 1
        self._begin(connection)

    def _work_queue(self, group: _Group) -> None:
        while group.queued and group.in_flight < group.limit:
            group.waiting -= 1
            self._begin(group.queued.popleft())

    def _begin(self, connection: _Connection) -> None:
        schedule = connection.schedule
        if schedule is not None:
            self._groups[schedule.group].in_flight += 1
        connection.task = self._loop.create_task(self._converse(connection))
        self._running.add(connection)

    async def _converse(self, connection: _Connection) -> None:
        report = await _conversation(connection.talk)
        if self._closed:  # a cancellation swallowed on the way (asyncio.wait_for can, in 3.11)
            return
        self._running.discard(connection)
        report["id"] = connection.id
        schedule = connection.schedule
        if schedule is None:
            self._report(report, loud=True)
            return
        group = self._groups[schedule.group]
        group.in_flight -= 1
        self._report(report, loud=not schedule.quiet)
        self._work_queue(group)
        self._release(schedule.group)

    def _end_unbegun(self, connection: _Connection, why: str, loud: bool) -> None:
        group = connection.schedule.group
        self._groups[group].waiting -= 1
        self._report({"id": connection.id, why: True}, loud)
        self._release(group)

    def _release(self, group_id: int) -> None:
        """A group with nothing in flight or waiting is forgotten, and its reports go out."""
        group = self._groups[group_id]
        if not group.in_flight and not group.waiting:
            del self._groups[group_id]
            self._wake()

    def _report(self, report: Report, loud: bool) -> None:
        self._finished.append(report)
        if loud:
            self._wake()

    def _wake(self) -> None:
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.call_soon(self.take)


async def _conversation(talk: Conversation) -> Report:
    """One connection, as the compiled engine holds it: greeting, EHLO, STARTTLS (454: on in
    plain text, as opportunistic bots do), the messages, QUIT; one report."""
    marks = _Marks(talk)
    handshake: dict | None = None
    tls_refused = False
    failure: dict | None = None
    smtp: aiosmtplib.SMTP | None = None
    try:
        marks.sock = sock = await _connected(talk)
        smtp = aiosmtplib.SMTP(sock=sock, timeout=talk.timeout_s, start_tls=False,
                               local_hostname=talk.ehlo.decode("ascii"))
        await smtp.connect()
        plain_transport = smtp.transport  # under TLS's, which does not count what it holds
        marks.greeted_ns = time.perf_counter_ns()
        marks.phase("smtp.connect")
        await smtp.ehlo()
        marks.phase("smtp.ehlo")
        if talk.context is not None:
            handshake, tls_refused = await _start_tls(smtp, talk, marks)
        mail_from, rcpt_to = talk.mail_from.decode("ascii"), talk.rcpt_to.decode("ascii")
        for index, message in enumerate(_messages(talk)):
            await smtp.mail(mail_from)
            marks.phase("smtp.mail")
            recipient = await smtp.rcpt(rcpt_to)
            if recipient.code != 250:  # aiosmtplib takes 251 too; the compiled engine does not
                raise aiosmtplib.SMTPRecipientRefused(recipient.code, recipient.message, rcpt_to)
            marks.phase("smtp.rcpt")
            queued = await smtp.data(message)
            if _unsent(smtp, plain_transport):
                raise _Ended("EarlyReply", f"the server replied {queued.code} before the "
                             "message had been sent whole", queued.code)
            marks.phase("smtp.data")
            accepted = {"code": queued.code, "reply": _kept(queued.message)}
            if index < marks.messages - 1:  # the last one ends at the connection's end
                accepted["at"] = marks.at()
            marks.accepted.append(accepted)
        if talk.resume and handshake is not None:
            _keep_session(smtp)
        with contextlib.suppress(aiosmtplib.SMTPResponseException):
            await smtp.quit()  # every message is in: QUIT's answer does not matter
        marks.phase("smtp.quit")
    except asyncio.CancelledError:  # the engine is closing: nothing is reported
        _close(smtp, marks.sock)
        raise
    except Exception as error:
        failure = _failure(error, talk.timeout_s)
    final = marks.at() if marks.sock is not None else {
        "ns": time.perf_counter_ns(), "received": 0, "sent": 0}
    _close(smtp, marks.sock)
    return {"start_ns": marks.start_ns, "start_wall_ns": marks.start_wall_ns,
            "greeted_ns": marks.greeted_ns, "final": final, "tls_refused": tls_refused,
            "tls": handshake, "accepted": marks.accepted, "phases": marks.phases,
            "failure": failure}


def _unsent(smtp: aiosmtplib.SMTP, plain_transport: asyncio.Transport) -> int:
    """Bytes written and not yet handed to the kernel: TLS's own and the socket's buffers."""
    if smtp.transport is None:
        return 0
    unsent = smtp.transport.get_write_buffer_size()
    if plain_transport is not smtp.transport:
        unsent += plain_transport.get_write_buffer_size()
    return unsent


def _close(smtp: aiosmtplib.SMTP | None, sock: socket.socket | None) -> None:
    if smtp is not None:
        smtp.close()  # under TLS, with close_notify
    elif sock is not None:
        sock.close()


async def _connected(talk: Conversation) -> socket.socket:
    """A TCP connection of our own, so that the kernel's byte counts can be read from it."""
    family = socket.AF_INET6 if ":" in talk.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        async with asyncio.timeout(talk.timeout_s):
            await asyncio.get_running_loop().sock_connect(sock, (talk.address, talk.port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _start_tls(smtp: aiosmtplib.SMTP, talk: Conversation,
                     marks: _Marks) -> tuple[dict | None, bool]:
    """STARTTLS and the handshake, then EHLO again: the handshake's report, or None and True
    when the server answered 454."""
    if not smtp.supports_extension("starttls"):
        raise _Ended("StartTlsNotOffered", "the server's EHLO does not offer STARTTLS")
    try:
        await smtp.starttls(tls_context=offering_sessions(talk.context),
                            server_hostname=talk.server_name, timeout=talk.timeout_s)
    except aiosmtplib.SMTPResponseException as refused:
        if refused.code != 454:
            raise
        marks.phase("smtp.starttls")
        return None, True
    marks.phase("smtp.starttls")
    tls = smtp.transport.get_extra_info("ssl_object")
    cipher = tls.cipher()
    handshake = {"version": tls.version(), "cipher": cipher[0] if cipher else "",
                 "resumed": tls.session_reused, "started_ns": tls.handshake_started_perf_ns,
                 "ended_ns": tls.handshake_ended_perf_ns}
    await smtp.ehlo()
    marks.phase("smtp.ehlo")
    return handshake, False


def _keep_session(smtp: aiosmtplib.SMTP) -> None:
    """A resuming connection that sent all its messages leaves its session (and the tickets
    that came with EHLO) for the next one to the same server, as the compiled engine does."""
    tls = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
    if isinstance(tls, _SessionOffering) and tls.session is not None:
        type(tls).sessions[tls.server_hostname] = tls.session


def _messages(talk: Conversation) -> Iterator[bytes]:
    """Each message whole and as written (aiosmtplib dot-stuffs it again for DATA), one at a
    time: a connection's messages of one size share their text, and must not be held whole."""
    pieces = [_undone_dot_stuffing(piece) for piece in talk.pieces]
    for head, text in zip(talk.head_of, talk.text_of, strict=True):
        yield pieces[head] + pieces[text]


def _undone_dot_stuffing(stuffed: bytes) -> bytes:
    """client._dot_stuffed undone: every line's leading dot was doubled."""
    if stuffed.startswith(b".."):
        stuffed = stuffed[1:]
    return stuffed.replace(b"\n..", b"\n.")


def _kept(text: str) -> str:
    """A reply's text as the compiled engine keeps it: bytes above 0x7f as code points below
    256 (client._text turns them back), at most KEPT_REPLY_CHARACTERS and a count of the rest."""
    text = text.encode("utf-8", "surrogateescape").decode("latin-1")
    if len(text) <= KEPT_REPLY_CHARACTERS:
        return text
    return (f"{text[:KEPT_REPLY_CHARACTERS]} [{len(text) - KEPT_REPLY_CHARACTERS} bytes more, "
            "not kept]")


def _failure(error: Exception, timeout_s: float) -> dict:
    """What ended the conversation, in the compiled engine's words: {code, reply, text}."""
    if isinstance(error, _Ended):
        return {"code": error.code, "reply": None, "text": f"{error.kind}: {error.text}"}
    if isinstance(error, aiosmtplib.SMTPResponseException):
        if error.code == _INVALID_RESPONSE:
            if "too long" in error.message:
                return _ended("ConnectionAbortedError", "the server's reply ran past "
                              "aiosmtplib's bound (8 KiB a line, 32 KiB in all) without ending")
            return {"code": 0, "reply": "", "text": f"smtp_0: {_kept(error.message)}"}
        if error.code < 100:  # aiosmtplib reads "25 ok" as 25; a code has three digits
            return {"code": 0, "reply": "", "text": f"smtp_0: {_kept(error.message)}"}
        reply = _kept(error.message)
        return {"code": error.code, "reply": reply, "text": f"smtp_{error.code}: {reply}"}
    if isinstance(error, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return _ended("TimeoutError", f"no reply within {timeout_s:g} s")
    cause = _os_cause(error)
    if cause is not None:
        return _ended(type(cause).__name__, str(cause))
    if isinstance(error, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError):
        return _ended("ConnectionResetError", "the server closed the connection")
    return _ended(type(error).__name__, str(error))


def _os_cause(error: BaseException) -> OSError | None:
    """The socket's or TLS's own error behind aiosmtplib's, if one is (a reset, an alert)."""
    while error is not None:
        if isinstance(error, ssl.SSLError) or (isinstance(error, OSError) and error.errno):
            return error
        error = error.__cause__
    return None


def _ended(kind: str, text: str) -> dict:
    return {"code": 0, "reply": None, "text": f"{kind}: {text}"}
