"""One SMTP conversation driven by the replies themselves: the sender's lean client.

Why not aiosmtplib over asyncio's SSL transport: per message they cost the sender about as much
CPU as aiosmtpd costs the receiver (a task switch, a future and a timer per command, a stream
reader, asyncio's SSLProtocol copying every record), so the generator ran out of CPU before the
server it was measuring (issue 12). Here each reply, as it arrives, writes the next command:
no task switch per command, one timer per connection, and TLS records go straight through
`ssl.SSLObject` (the same OpenSSL handshake and record layer). No PIPELINING: every command
waits for its reply, as RFC 5321 requires of a server that does not offer it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from typing import Protocol

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_TLS_NOT_AVAILABLE = 454
_MAX_REPLY_BYTES = 64 * 1024  # far above any real reply (RFC 5321: 512 bytes per line)
_READ_BYTES = 16 * 1024  # one TLS record's plaintext at most


class SmtpReplyError(Exception):
    """The server answered a step with a code it should not have."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class StartTlsNotOffered(Exception):
    """STARTTLS was wanted and the server's EHLO did not list it."""


class Listener(Protocol):
    """What the conversation tells the session that measures it."""

    def message_body(self, index: int) -> bytes: ...

    def message_accepted(self, index: int, code: int, reply: str) -> None: ...

    def phase(self, name: str, started_ns: int, ended_ns: int) -> None: ...

    def greeted(self) -> None: ...

    def ending(self) -> None: ...


class Plan:
    """What to say: EHLO name, envelope, STARTTLS or not, how many messages."""

    __slots__ = ("ehlo", "mail_from", "messages", "rcpt_to", "server_hostname", "tls_context")

    def __init__(self, ehlo: bytes, mail_from: bytes, rcpt_to: bytes, messages: int,
                 tls_context: ssl.SSLContext | None, server_hostname: str | None) -> None:
        self.ehlo = ehlo
        self.mail_from = mail_from
        self.rcpt_to = rcpt_to
        self.messages = messages
        self.tls_context = tls_context
        self.server_hostname = server_hostname


# The steps of a conversation, in order; each names the reply it waits for.
_GREETING, _EHLO, _STARTTLS, _HANDSHAKE, _EHLO_TLS, _MAIL, _RCPT, _DATA, _BODY, _QUIT = range(10)
_PHASE_NAMES = {_GREETING: "smtp.connect", _EHLO: "smtp.ehlo", _STARTTLS: "smtp.starttls",
                _EHLO_TLS: "smtp.ehlo", _MAIL: "smtp.mail", _RCPT: "smtp.rcpt",
                _DATA: "smtp.data", _BODY: "smtp.data", _QUIT: "smtp.quit"}
_EXPECTED = {_GREETING: 220, _EHLO: 250, _STARTTLS: 220, _EHLO_TLS: 250, _MAIL: 250,
             _RCPT: 250, _DATA: 354, _BODY: 250, _QUIT: 221}


class SmtpWire(asyncio.Protocol):
    """One connection from greeting to QUIT; `done` resolves when it is over (or failed)."""

    def __init__(self, plan: Plan, listener: Listener, timeout_s: float,
                 quick_ack: bool = False, trace_phases: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._plan = plan
        self._listener = listener
        self._timeout_s = timeout_s
        self._quick_ack = quick_ack and _TCP_QUICKACK is not None
        self._trace_phases = trace_phases
        self.transport: asyncio.Transport | None = None
        self.socket: socket.socket | None = None
        self.ssl_object: ssl.SSLObject | None = None
        self.tls_refused = False  # the server answered STARTTLS 454; we went on in plain text
        self.accepted = 0
        self._incoming: ssl.MemoryBIO | None = None
        self._outgoing: ssl.MemoryBIO | None = None
        self._received = bytearray()
        self._plain_buffer: memoryview | None = None  # decrypted replies land here
        self._step = _GREETING
        self._phase_started_ns = time.time_ns()
        self._deadline = self._loop.time() + timeout_s
        self._timer = self._loop.call_at(self._deadline, self._check_deadline)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.socket = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        if self.ssl_object is None:
            self._take(data)
            return
        self._incoming.write(data)
        if self._step == _HANDSHAKE:
            self._advance_handshake()
            if self._step == _HANDSHAKE:
                return
        ssl_object, incoming, buffer = self.ssl_object, self._incoming, self._plain_buffer
        while not self.done.done():
            try:
                count = ssl_object.read(_READ_BYTES, buffer)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as error:
                self._finish(error)
                return
            if not count:  # the server's close_notify
                self._finish(ConnectionResetError("the server ended TLS (close_notify)"))
                return
            self._take(buffer[:count])
            if not incoming.pending and not ssl_object.pending():
                break  # all decrypted: another read would only raise SSLWantReadError
        self._flush_tls()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or ConnectionResetError("the server closed the connection"))

    # -- the conversation -------------------------------------------------------------------

    def _take(self, data: bytes) -> None:
        """Collect reply lines; a reply ends at a line whose fourth byte is not '-'."""
        received = self._received
        received += data
        start = 0
        while not self.done.done():
            end = received.find(b"\r\n", start)
            if end < 0:
                break
            line = received[start:end]
            start = end + 2
            if line[3:4] == b"-":
                continue
            text = bytes(received[:end])
            del received[:start]
            start = 0
            code = int(line[:3]) if line[:3].isdigit() else 0
            self._replied(code, text)
        if len(received) > _MAX_REPLY_BYTES and not self.done.done():
            self._finish(ConnectionAbortedError(
                f"the server's reply ran past {_MAX_REPLY_BYTES // 1024} KiB without ending"))

    def _replied(self, code: int, text: bytes) -> None:
        step = self._step
        if self._trace_phases and not (step == _STARTTLS and code == 220):  # on to the handshake
            now = time.time_ns()
            self._listener.phase(_PHASE_NAMES[step], self._phase_started_ns, now)
            self._phase_started_ns = now
        if code != _EXPECTED[step]:
            if step == _STARTTLS and code == _TLS_NOT_AVAILABLE:
                self.tls_refused = True  # as opportunistic bots do: carry on in plain text
                self._next_message()
                return
            self._fail_reply(code, text)
            return
        if step == _GREETING:
            self._listener.greeted()
            self._send(_EHLO, b"EHLO " + self._plan.ehlo)
        elif step == _EHLO:
            if self._plan.tls_context is None:
                self._next_message()
            elif b"STARTTLS" in text.upper():
                self._send(_STARTTLS, b"STARTTLS")
            else:
                self._finish(StartTlsNotOffered("the server's EHLO does not offer STARTTLS"))
        elif step == _STARTTLS:
            self._start_handshake()
        elif step == _EHLO_TLS:
            self._next_message()
        elif step == _MAIL:
            self._send(_RCPT, b"RCPT TO:<" + self._plan.rcpt_to + b">")
        elif step == _RCPT:
            self._send(_DATA, b"DATA")
        elif step == _DATA:
            self._send(_BODY, _dot_stuffed(self._listener.message_body(self.accepted)), raw=True)
        elif step == _BODY:
            self.accepted += 1
            self._listener.message_accepted(self.accepted - 1, code, _message_of(text))
            self._next_message()
        elif step == _QUIT:
            self._finish(None)

    def _next_message(self) -> None:
        if self.accepted < self._plan.messages:
            self._send(_MAIL, b"MAIL FROM:<" + self._plan.mail_from + b">")
        else:
            self._send(_QUIT, b"QUIT")

    def _send(self, step: int, data: bytes, raw: bool = False) -> None:
        self._step = step
        self._deadline = self._loop.time() + self._timeout_s
        self._write(data if raw else data + b"\r\n")

    def _fail_reply(self, code: int, text: bytes) -> None:
        if self._step == _QUIT:  # every message is in: QUIT's answer does not matter
            self._finish(None)
        else:
            self._finish(SmtpReplyError(code, _message_of(text)))

    def _start_handshake(self) -> None:
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        # One buffer for the connection: a fresh 64 KiB bytes per read made glibc consolidate
        # its free chunks at every reply.
        self._plain_buffer = memoryview(bytearray(_READ_BYTES))
        self.ssl_object = self._plan.tls_context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=self._plan.server_hostname)
        self._step = _HANDSHAKE
        self._deadline = self._loop.time() + self._timeout_s
        self._advance_handshake()

    def _advance_handshake(self) -> None:
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return
        except (ssl.SSLError, OSError) as error:
            self._flush_tls()  # the alert, if OpenSSL wrote one
            self._finish(error)
            return
        if self._trace_phases:  # the handshake belongs to the STARTTLS phase
            now = time.time_ns()
            self._listener.phase("smtp.starttls", self._phase_started_ns, now)
            self._phase_started_ns = now
        self._send(_EHLO_TLS, b"EHLO " + self._plan.ehlo)

    def _write(self, data: bytes) -> None:
        if self.ssl_object is None:
            self.transport.write(data)
        else:
            self.ssl_object.write(data)
            self._flush_tls()
        if self._quick_ack:
            self._acknowledge_replies_at_once()

    def _acknowledge_replies_at_once(self) -> None:
        """TCP_QUICKACK after each command is written: the kernel would otherwise go back to
        delaying ACKs once we send. Postfix with TLS 1.3 sends its session tickets and its next
        reply as separate segments; with our ACK for the first held back 40 ms, the second waits
        that long (Nagle)."""
        with contextlib.suppress(OSError):
            self.socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    def _flush_tls(self) -> None:
        if self._outgoing.pending and self.transport is not None:
            self.transport.write(self._outgoing.read())

    def _check_deadline(self) -> None:
        """One timer per connection, moved on only when it fires (not at every command)."""
        if self.done.done():
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        self._finish(TimeoutError(f"no reply within {self._timeout_s:g} s"))

    def abandon(self) -> None:
        """The connection never came (or the caller gave up): stop without a result."""
        self._timer.cancel()
        if self.transport is not None:
            self.transport.abort()
        self.done.cancel()

    def _finish(self, error: BaseException | None) -> None:
        """Over: close politely (close_notify under TLS) or abort on a failure, once."""
        if self.done.done():
            return
        self._timer.cancel()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self._listener.ending()
            if error is None:
                if self.ssl_object is not None:
                    with contextlib.suppress(ssl.SSLError, OSError):
                        self.ssl_object.unwrap()
                    self._flush_tls()
                transport.close()
            else:
                transport.abort()
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)


def _message_of(text: bytes) -> str:
    return "\n".join(line[4:].decode("utf-8", "replace") for line in text.split(b"\r\n"))


def _dot_stuffed(message: bytes) -> bytes:
    """The DATA payload: lines starting with '.' doubled, CRLF ended, then '.'."""
    if message.startswith(b".") or b"\n." in message:
        message = message.replace(b"\n.", b"\n..")
        if message.startswith(b"."):
            message = b"." + message
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


async def converse(address: str, port: int, wire: SmtpWire, timeout_s: float) -> None:
    """Connect and hold the conversation to its end; raises what ended it early."""
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.get_running_loop().create_connection(lambda: wire, address, port)
    except BaseException:
        wire.abandon()
        raise
    await wire.done
