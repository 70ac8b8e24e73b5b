"""Where the receiver does aiosmtpd's work its own, cheaper way, it answers as an MTA does."""

from __future__ import annotations

import socket
import ssl

import pytest
from aiosmtpd.smtp import SMTP

from tests.helpers import finish_session, read_reply, starttls_socket
from tests.smtp_codes import S504_UNKNOWN_AUTH
from tlsstorm.receiver.smtp import MeasuredSMTP

_APPLICATION_DATA = 23


def _records(data: bytes) -> list[int]:
    """The content type of each complete TLS record in `data`."""
    types, offset = [], 0
    while offset + 5 <= len(data):
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        types.append(data[offset])
        offset += 5 + length
    assert offset == len(data), "the bytes end inside a record"
    return types


class _TlsOverRawSocket:
    """A client TLS connection driven by hand, so the records on the wire can be counted."""

    def __init__(self, raw: socket.socket, context: ssl.SSLContext) -> None:
        self.raw = raw
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing,
                                    server_hostname="receiver.tlsstorm.test")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self.incoming.write(raw.recv(65536))
        self._flush()

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending:
            self.raw.sendall(pending)

    def command(self, line: bytes) -> tuple[bytes, bytes]:
        """Sends `line`; returns the reply and the raw bytes it came in."""
        self.tls.write(line)
        self._flush()
        wire, reply = b"", b""
        while not (reply.endswith(b"\r\n") and reply.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1][3:4]
                   == b" "):
            chunk = self.raw.recv(65536)
            assert chunk, "the receiver closed the connection"
            wire += chunk
            self.incoming.write(chunk)
            try:
                reply += self.tls.read(65536)
            except ssl.SSLWantReadError:
                continue
        return reply, wire


def test_a_multi_line_reply_goes_out_in_one_tls_record(receiver, any_cert_context):
    with socket.create_connection(("127.0.0.1", receiver.smtp_port), timeout=10) as raw:
        read_reply(raw)
        raw.sendall(b"EHLO client.test\r\n")
        assert read_reply(raw).startswith(b"250-")
        raw.sendall(b"STARTTLS\r\n")
        assert read_reply(raw).startswith(b"220")
        client = _TlsOverRawSocket(raw, any_cert_context)
        client.command(b"NOOP\r\n")  # takes in the session tickets sent after the handshake
        reply, wire = client.command(b"EHLO client.test\r\n")
    assert reply.count(b"\r\n") >= 4, reply
    assert reply.startswith(b"250-") and b"\r\n250 " in reply
    assert _records(wire) == [_APPLICATION_DATA]


ADDRESSES = [
    "<bot1@example.test>",
    "<bot1@example.test> SIZE=2048 BODY=8BITMIME",
    "  <first.last+tag@mail.example.test>",
    "<o'hara!#$%&*/=?^_`{|}~-@example.test>",
    "<>",
    "<postmaster>",
    "<\"quoted local\"@example.test>",
    "<@relay.test:bot@example.test>",
    "<bot@[127.0.0.1]>",
    "<bot..dots@example.test>",
    "<.bot@example.test>",
    "<bot@example.test",
    "<bot@-example.test>",
    "<bot@exa mple.test>",
    "bot@example.test",
    "bot@example.test SIZE=10",
    "<bot(comment)@example.test>",
    "<" + "x" * 70 + "@example.test>",
    "<bot@example.test>\tBODY=7BIT",
    "<bot@example.test>>",
    "<ünïcode@example.test>",
]


@pytest.mark.parametrize("local_part_limit", [0, 64])
def test_addresses_are_read_as_aiosmtpd_reads_them(local_part_limit):
    ours, theirs = MeasuredSMTP.__new__(MeasuredSMTP), SMTP.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = local_part_limit
    for address in ADDRESSES:
        assert ours._getaddr(address) == theirs._getaddr(address), address


def test_no_auth_is_announced_or_accepted_after_starttls(receiver, any_cert_context):
    tls_sock = starttls_socket(receiver.smtp_port, any_cert_context)
    tls_sock.sendall(b"EHLO client.test\r\n")
    ehlo = read_reply(tls_sock)
    tls_sock.sendall(b"AUTH PLAIN AGJvdABzZWNyZXQ=\r\n")
    auth = read_reply(tls_sock)
    finish_session(tls_sock)

    assert b"AUTH" not in ehlo and ehlo.startswith(b"250-")
    assert int(auth[:3]) == S504_UNKNOWN_AUTH
