"""Scripted and hostile SMTP servers on loopback, each for one connection: what the sender's
engines are tested against (tests/test_engine.py) and compared on (tests/test_reference_engine.py).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

from tests.helpers import serve_up_to_starttls
from tlsstorm.common.pki import self_signed
from tlsstorm.common.tls import server_context


def key_lines(path: Path) -> set[str]:
    """The secrets in an NSS key log (what Wireshark reads), one per line."""
    return {line for line in path.read_text().splitlines() if line and not line.startswith("#")}


def scripted_server(replies: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    """One connection: each reply is written once the client's next line has arrived (the
    first, the greeting, at once); a reply may be split into pieces written apart."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            for index, reply in enumerate(replies):
                if index:
                    connection.recv(4096)
                for piece in reply.split(b"|"):
                    connection.sendall(piece)
                    time.sleep(0.02)
            time.sleep(0.5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


# A conversation's replies after EHLO: (what ends the command answered, the reply's records).
AFTER_EHLO = [
    (b"\r\n", [b"250 ", b"sender ok\r\n"]),
    (b"\r\n", [b"250 recipient ok\r\n"]),
    (b"\r\n", [b"354 go on\r\n"]),
    (b"\r\n.\r\n", [b"250 ", b"queued\r\n"]),
    (b"\r\n", [b"221 bye\r\n"]),
]


def tls_server_writing_records(replies: list[tuple[bytes, list[bytes]]],
                                key_log: Path | None = None
                                ) -> tuple[socket.socket, threading.Thread]:
    """One STARTTLS connection whose replies after the handshake each arrive as the TLS records
    given, written together (one segment, as far as the socket takes it); QUIT's reply comes
    with close_notify behind it. Its session keys go to `key_log` when given."""
    context = server_context(self_signed("mx.test", "ecdsa-p256"), session_tickets=False)
    if key_log is not None:
        context.keylog_filename = str(key_log)
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            serve_up_to_starttls(connection)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = context.wrap_bio(incoming, outgoing, server_side=True)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    connection.sendall(outgoing.read())
                    incoming.write(connection.recv(65536))
            received = b""
            for ending, records in replies:
                while ending not in received:
                    try:
                        received += tls.read(65536)
                    except ssl.SSLWantReadError:
                        connection.sendall(outgoing.read())
                        incoming.write(connection.recv(65536))
                received = received.partition(ending)[2]
                for record in records:
                    tls.write(record)
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()  # close_notify, in the same segment as QUIT's reply
            connection.sendall(outgoing.read())
            time.sleep(0.5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def _rst(connection: socket.socket) -> None:
    """Closed with a reset (SO_LINGER 0), not a FIN."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def _until_closed(connection: socket.socket) -> None:
    """Holds the connection until the client closes it (at most 5 s)."""
    connection.settimeout(5)
    with contextlib.suppress(OSError):
        while connection.recv(65536):
            pass


def _bytewise(talk, data: bytes) -> None:
    for index in range(len(data)):
        talk.sendall(data[index:index + 1])  # a segment each (TCP_NODELAY), a record under TLS
        time.sleep(0.001)


# What the server does instead of answering MAIL FROM, inside TLS or not. Each returns True to
# go on with the conversation as a good server would.
IN_CONVERSATION = {
    "a 1 MiB line without CRLF": lambda talk, raw: talk.sendall(b"2" + b"x" * (1 << 20)),
    "100,000 continuation lines": lambda talk, raw: talk.sendall(b"250-x\r\n" * 100_000),
    "a reply a byte per segment": lambda talk, raw: _bytewise(talk, b"250 sender ok\r\n") or True,
    "NUL and non-ASCII bytes": lambda talk, raw: talk.sendall(b"250 ok \x00\xff\xfe\r\n") or True,
    "a code of two digits": lambda talk, raw: talk.sendall(b"25 ok\r\n"),
    "a code of four digits": lambda talk, raw: talk.sendall(b"2500 ok\r\n") or True,
    "FIN mid-reply": lambda talk, raw: talk.sendall(b"250 sen") or raw.shutdown(socket.SHUT_WR),
    "RST mid-reply": lambda talk, raw: talk.sendall(b"250 sen") or _rst(raw),
    "silence": lambda talk, raw: None,
}
# What it does instead of the handshake, after STARTTLS's 220.
INSTEAD_OF_HANDSHAKE = {
    "closing after STARTTLS's 220": lambda raw: raw.shutdown(socket.SHUT_WR),
    "garbage instead of a ServerHello": lambda raw: raw.sendall(b"HTTP/1.1 400 Bad\r\n\r\n"),
    "a 65535-byte record header": lambda raw: raw.sendall(b"\x16\x03\x03\xff\xff" + b"\0" * 64),
    "a fatal alert": lambda raw: raw.sendall(b"\x15\x03\x03\x00\x02\x02\x28"),
}
TLS_CLOSE_NOTIFY = "close_notify mid-reply"


def hostile_server(case: str, tls: bool) -> tuple[socket.socket, threading.Thread]:
    """A server that goes wrong as `case` says, at MAIL FROM's reply (inside TLS when `tls`) or
    in place of the handshake; a good server otherwise, to the end."""
    context = server_context(self_signed("mx.test", "ecdsa-p256"), session_tickets=False)
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        raw, _ = server.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError), raw:
            talk = raw
            talk.sendall(b"220 mx.test\r\n")
            talk.recv(4096)
            if tls:
                talk.sendall(b"250-mx.test\r\n250 STARTTLS\r\n")
                talk.recv(4096)
                talk.sendall(b"220 go ahead\r\n")
                if case in INSTEAD_OF_HANDSHAKE:
                    if case != "closing after STARTTLS's 220":
                        raw.recv(4096)  # the ClientHello, answered so
                    INSTEAD_OF_HANDSHAKE[case](raw)
                    _until_closed(raw)
                    return
                # The socket is the TLS one's from here (wrapping detaches the plain one); its
                # shutdown and close send no close_notify.
                raw = talk = context.wrap_socket(raw, server_side=True)
                talk.recv(4096)
            talk.sendall(b"250 mx.test\r\n")
            talk.recv(4096)  # MAIL FROM
            if case == TLS_CLOSE_NOTIFY:
                talk.sendall(b"250 sen")
                talk.unwrap()
                _until_closed(raw)
                return
            if not IN_CONVERSATION[case](talk, raw):
                _until_closed(raw)
                return
            for reply in (b"250 ok\r\n", b"354 go on\r\n", b"250 queued\r\n", b"221 bye\r\n"):
                received = talk.recv(65536)
                while reply == b"250 queued\r\n" and not received.endswith(b"\r\n.\r\n"):
                    received += talk.recv(65536)
                talk.sendall(reply)
            time.sleep(0.5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


# 30 KiB: under aiosmtplib's bound for a reply (32 KiB), so both engines take it.
BIG_REPLY = b"".join(b"250-" + b"y" * 70 + b"\r\n" for _ in range(400)) + b"250 queued\r\n"


def server_answering_data_early(tls: bool) -> tuple[socket.socket, threading.Thread]:
    """A server that, DATA answered, reads a little of the message and answers 250 at once,
    then stops reading (its receive buffer kept small, so the rest cannot leave the client)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    server.bind(("127.0.0.1", 0))
    server.listen()
    context = server_context(self_signed("mx.test", "ecdsa-p256"), session_tickets=False)

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            if tls:
                serve_up_to_starttls(connection)
                talk = context.wrap_socket(connection, server_side=True)
                talk.recv(4096)  # EHLO
            else:
                talk = connection
                talk.sendall(b"220 mx.test\r\n")
                talk.recv(4096)
            talk.sendall(b"250 mx.test\r\n")
            for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go on\r\n"):
                talk.recv(4096)
                talk.sendall(reply)
            talk.recv(4096)  # the message's first bytes
            talk.sendall(b"250 2.0.0 queued early\r\n")
            time.sleep(3)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


