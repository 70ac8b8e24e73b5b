"""The receiver's SMTP protocol: aiosmtpd plus per-session measurement and a handshake deadline."""

from __future__ import annotations

import asyncio
import asyncio.sslproto as sslproto
import errno
import logging
import re
import ssl
import time
from collections.abc import Callable
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError

from aiosmtpd.smtp import SMTP, TLSSetupException, syntax

from tlsstorm.common.tls import TimedSSLObject
from tlsstorm.common.wire import wire_bytes
from tlsstorm.receiver.cpu_meter import CpuAccount
from tlsstorm.receiver.gate import GatedTransportProtocol, GateRejected
from tlsstorm.receiver.handler import SinkHandler
from tlsstorm.receiver.limits import SessionLimits
from tlsstorm.receiver.session import RawTransportProtocol, SessionRecord

# aiosmtpd logs every command at INFO and every bad one at WARNING; a measured hot path (and
# a flood of hostile input) must not format log lines. Errors are counted in the stats.
logging.getLogger("mail.log").setLevel(logging.ERROR)

_REPLIES_BEFORE_YIELD = 16
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# <dot-atom@domain>, what nearly every client sends: read without the email package's parser.
_PLAIN_ANGLE_ADDRESS = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*(?![ \t(])(.*)",
    re.DOTALL)


_AUTH_MECHANISMS = ("LOGIN", "PLAIN")


class LeanSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS layer with a 32 KiB receive buffer instead of 256 KiB: the buffer lives as
    long as the session, and a TLS record is at most 16 KiB, so the rest was RSS spent for
    nothing on every concurrent STARTTLS session."""

    max_size = 32 * 1024


class MeasuredSMTP(SMTP):
    """One instance per connection; fills a SessionRecord and hands it over at the end."""

    def __init__(
        self,
        handler: SinkHandler,
        *,
        on_session_end: Callable[[SessionRecord, CpuAccount | None], None],
        handshake_timeout_s: float,
        data_timeout_s: float,
        cpu_account: CpuAccount | None,
        limits: SessionLimits,
        **kwargs,
    ) -> None:
        # A sink authenticates nobody: no AUTH mechanism (AUTH is answered 504), none announced.
        super().__init__(handler, auth_exclude_mechanism=_AUTH_MECHANISMS, **kwargs)
        self._data_timeout_s = data_timeout_s
        self._in_data = False
        self.limits = limits
        self._refusal: tuple[str, str] | None = None  # (counted as, reply) when refused at connect
        self._on_session_end = on_session_end
        self._handshake_timeout_s = handshake_timeout_s
        self._cpu_account = cpu_account
        self.record: SessionRecord = SessionRecord(None)
        self._raw_socket = None
        self._memory_held: bool | None = None  # None: nothing reserved; True: a TLS session's
        self._finished = False
        self._reset_by_peer = False
        self._replies_since_yield = 0
        self._continuation_lines: list[bytes] = []

    def __dir__(self):
        """The protocol's command and auth methods only, computed once per class.

        aiosmtpd finds its smtp_* and auth_* methods by reflecting over dir() of every new
        session: ~100 us per connection, more than a plain session's SMTP work.
        """
        cls = type(self)
        if "_protocol_names" not in cls.__dict__:
            cls._protocol_names = [name for name in super().__dir__()
                                   if name.startswith(("smtp_", "auth_"))]
        return cls._protocol_names

    # -- connection life cycle -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:
            self.record = SessionRecord(transport.get_extra_info("peername"))
            self._raw_socket = transport.get_extra_info("socket")
            limits = self.limits
            limits.opened()
            if limits.rejects(self.record.client_address):
                self._refusal = ("rejected_at_connect",
                                 "554 5.7.1 Service unavailable; client host blocked")
            elif limits.open_sessions > limits.max_connections:
                self._refusal = ("too_many_connections",
                                 "421 4.3.2 Too many connections, try again later")
            elif limits.memory is not None:
                if limits.memory.admit_session():
                    self._memory_held = False
                else:
                    self._refusal = ("memory_full",
                                     "421 4.3.2 Service busy: out of memory, try again later")
        super().connection_made(transport)

    def _handle_client(self):
        return self._refuse(*self._refusal) if self._refusal else super()._handle_client()

    # -- shutting down ---------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return not self._finished

    def shut_down(self) -> None:
        """The receiver is stopping, as an MTA does: a session between transactions is told so
        (421) and closed now; one in a transaction or a handshake finishes it (its message is
        accepted or refused as usual) and is told at its next MAIL."""
        busy = self._in_data or (self.envelope is not None and self.envelope.mail_from) or (
            self.record.tls and self.record.handshake_ok is None)
        if not busy and not self._finished and not self._gone():
            self.record.errors.append("shut_down")
            self.transport.write(b"421 4.3.2 Service shutting down\r\n")
            self._close_now()

    def _close_now(self) -> None:
        """Closes without waiting for the client: TLS sends its close_notify but does not wait
        for the client's (a client that stops reading would hold the stop until its timeout)."""
        self.transport.close()
        if self._original_transport is not None:
            self._original_transport.close()

    def cut(self) -> None:
        """The drain's deadline passed with this session still open."""
        self.record.errors.append("shut_down")
        (self._original_transport or self.transport).abort()

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.limits.draining:
            await self._refuse("shut_down", "421 4.3.2 Service shutting down")
            return
        await super().smtp_MAIL(arg)

    async def _refuse(self, kind: str, reply: str) -> None:
        self.record.errors.append(kind)
        await self.push(reply)
        self._close_now()

    def _capture_wire(self) -> None:
        counted = wire_bytes(self._raw_socket)
        if counted is not None:
            self.record.wire_bytes_in, self.record.wire_bytes_out = counted
        self._raw_socket = None

    def _timeout_cb(self) -> None:
        self.record.errors.append("data_timeout" if self._in_data else "idle_timeout")
        super()._timeout_cb()

    async def smtp_DATA(self, arg: str) -> None:
        # One deadline for the whole DATA phase: a slowloris cannot keep it open byte by byte.
        self._reset_timeout(self._data_timeout_s)
        self._in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False

    def connection_lost(self, error: Exception | None) -> None:
        # After a successful STARTTLS the raw transport's protocol has read the counters
        # already; on a plain session or a failed handshake the socket is still open here.
        if self._raw_socket is not None:
            self._capture_wire()
        self._reset_by_peer = _is_reset(error)
        super().connection_lost(error)
        # asyncio keeps the error in the stream's closed-future, which only the protocol's
        # finalizer reads: when the garbage collector finalizes the future first (at exit, or
        # in a cycle), it logs "Future exception was never retrieved". The session records
        # the error; the future's copy is read here.
        closed = self._closed
        if closed.done() and not closed.cancelled():
            closed.exception()
        self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        record = self.record
        self.limits.closed(record.tls)
        if self._memory_held is not None and self.limits.memory is not None:
            self.limits.memory.release(tls=self._memory_held)
        record.ended_perf_ns = time.perf_counter_ns()
        if not record.quit and not record.errors:
            record.errors.append("reset" if self._reset_by_peer else "dropped")
        # Reported from a callback of its own, still in the session's context: the socket's
        # close, which asyncio does after this returns, is then charged to the session too.
        self.loop.call_soon(self._on_session_end, record, self._cpu_account)

    # -- replies -------------------------------------------------------------------------
    async def push(self, status: str | bytes) -> None:
        response = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") if isinstance(
            status, str
        ) else status
        if response.startswith(b"250-AUTH"):
            return  # aiosmtpd announces AUTH after STARTTLS even with no mechanism left
        if self._gone():
            # The peer has gone (pipelined commands are still being read from the buffer):
            # nothing to write to, and asyncio warns on every write after a loss. Yield, so
            # that the cancellation connection_lost sends arrives.
            await asyncio.sleep(0)
            return
        self.record.note_reply(response)
        if response[3:4] == b"-":
            # A multi-line reply (EHLO's) goes out in one write, as an MTA sends it: aiosmtpd
            # pushes it line by line, which cost a syscall, and after STARTTLS a TLS record
            # with its own encryption, per line.
            self._continuation_lines.append(response)
            return
        if self._continuation_lines:
            response = b"\r\n".join((*self._continuation_lines, response))
            self._continuation_lines.clear()
        self._writer.write(response + b"\r\n")
        await self._writer.drain()
        self._replies_since_yield += 1
        if self._replies_since_yield >= _REPLIES_BEFORE_YIELD:
            # Pipelined commands arrive already buffered, so the session would run without ever
            # yielding: let other sessions in now and then (a normal session rarely gets here).
            self._replies_since_yield = 0
            await asyncio.sleep(0)

    def _gone(self) -> bool:
        """The connection is closing: the socket's transport (under TLS's, after STARTTLS)."""
        socket_transport = self._original_transport or self.transport
        return socket_transport is None or socket_transport.is_closing()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parse, same results, at a tenth of the cost for plain addresses:
        it defined a typing class on every call and ran the email package's full parser
        (together ~45 us per MAIL and per RCPT)."""
        if not arg:
            return "", ""
        plain = _PLAIN_ANGLE_ADDRESS.fullmatch(arg.lstrip())
        if plain is not None:
            addr_spec, rest = plain.groups()
        else:
            addr_spec, rest = self._parse_address(arg)
            if addr_spec is None:
                return None, None
        if self.local_part_limit and len(addr_spec.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr_spec, rest

    @staticmethod
    def _parse_address(arg: str) -> tuple[str | None, str | None]:
        parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
        try:
            address, rest = parse(arg)
        except HeaderParseError:
            return None, None
        return address.addr_spec, rest

    async def smtp_QUIT(self, arg: str) -> None:
        if not arg:
            self.record.quit = True
        await super().smtp_QUIT(arg)

    # -- STARTTLS ------------------------------------------------------------------------
    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
            return
        if self._tls_protocol is not None:
            # RFC 3207 4.2: STARTTLS inside TLS is an error, not a second handshake.
            await self.push("503 5.5.1 Error: TLS already active")
            return
        if self.envelope is not None and self.envelope.mail_from:
            await self.push("503 5.5.1 Error: MAIL transaction in progress")
            return
        limits = self.limits
        if limits.refuses_starttls(self.record.client_address):
            self.record.errors.append("starttls_refused")
            await self.push("454 4.7.0 TLS not available")
            return
        if limits.handshakes >= limits.max_handshakes:
            self.record.errors.append("handshake_busy")
            await self.push("454 4.7.0 TLS not available due to load, try again later")
            return
        if limits.memory is not None:
            if not limits.memory.admit_tls():
                self.record.errors.append("tls_memory_full")
                await self.push("454 4.7.0 TLS not available due to load, try again later")
                return
            self._memory_held = True
        limits.handshakes += 1
        limits.upgraded()
        try:
            await self._start_tls()
        finally:
            limits.handshakes -= 1

    async def _start_tls(self) -> None:
        record = self.record
        record.tls = True
        await self.push("220 2.0.0 Ready to start TLS")
        waiter = self.loop.create_future()
        tls_protocol = LeanSSLProtocol(
            self.loop, self, self.tls_context, waiter, server_side=True,
            ssl_handshake_timeout=self._handshake_timeout_s,
        )
        self._tls_protocol = tls_protocol
        self._original_transport = self.transport
        gate = self.limits.gate
        self._original_transport.set_protocol(
            GatedTransportProtocol(tls_protocol, self._capture_wire, gate, record,
                                   self._original_transport)
            if gate is not None else RawTransportProtocol(tls_protocol, self._capture_wire)
        )
        self.transport = tls_protocol._app_transport
        started_ns, started_perf = time.time_ns(), time.perf_counter()
        account = self._cpu_account
        cpu_before = account.charged_ns() if account is not None else 0
        tls_protocol.connection_made(self._original_transport)
        try:
            await waiter
        except asyncio.CancelledError:
            # aiosmtpd cancels this task when the client leaves. A client that quits right
            # after its handshake can leave before the task resumes: the handshake was done
            # and paid for all the same, so it is counted.
            if waiter.done() and not waiter.cancelled():
                self._record_handshake(waiter, tls_protocol, started_ns, started_perf)
            raise
        except Exception:
            pass  # the waiter holds the error, recorded next
        finally:
            # What the session was charged while its handshake ran: only its own callbacks,
            # so the handshake's CPU, where its wall time also holds the client's part.
            if account is not None:
                record.handshake_cpu_ns = account.charged_ns() - cpu_before
        if not self._record_handshake(waiter, tls_protocol, started_ns, started_perf):
            raise TLSSetupException() from waiter.exception()

    def _record_handshake(self, waiter: asyncio.Future, tls_protocol: sslproto.SSLProtocol,
                          started_ns: int, started_perf: float) -> bool:
        """The handshake's outcome, from its finished waiter, into the record; True if done."""
        error = waiter.exception()
        ssl_object = tls_protocol._get_extra_info("ssl_object") if error is None else None
        if ssl_object is None:  # failed, or the peer left mid-handshake without an error
            self._handshake_failed(error or ConnectionResetError(), started_ns,
                                   time.perf_counter() - started_perf)
            return False
        record = self.record
        record.handshake_ok = True
        if isinstance(ssl_object, TimedSSLObject) and ssl_object.handshake_ms is not None:
            record.handshake_started_ns = ssl_object.handshake_started_ns
            record.handshake_ms = ssl_object.handshake_ms
        else:
            record.handshake_started_ns = started_ns
            record.handshake_ms = (time.perf_counter() - started_perf) * 1000
        record.tls_version = ssl_object.version()
        cipher = ssl_object.cipher()
        record.cipher = cipher[0] if cipher else None
        record.resumed = ssl_object.session_reused
        return True

    def _handshake_failed(self, error: BaseException, started_ns: int, elapsed_s: float) -> None:
        record = self.record
        record.handshake_ok = False
        record.handshake_started_ns = started_ns
        record.handshake_ms = elapsed_s * 1000
        timed_out = elapsed_s >= self._handshake_timeout_s * 0.9
        if isinstance(error, GateRejected):
            record.errors.append("handshake_gated")
        elif isinstance(error, ConnectionAbortedError) and timed_out:
            record.errors.append("handshake_timeout")
        elif isinstance(error, ssl.SSLError):
            record.errors.append("handshake_failed")
        elif _is_reset(error):
            record.errors.append("handshake_reset")
        else:
            record.errors.append("handshake_dropped")

    async def handle_exception(self, error: Exception) -> str:
        if not isinstance(error, TLSSetupException):
            self.record.errors.append("internal_error")
        return "421 4.3.0 Error: TLS handshake failed" if isinstance(
            error, TLSSetupException
        ) else "451 4.3.0 Error: internal error"


def _is_reset(error: BaseException | None) -> bool:
    """The peer reset the connection (a TCP RST), as opposed to closing it in order (FIN)."""
    return isinstance(error, ConnectionResetError) and error.errno == errno.ECONNRESET
