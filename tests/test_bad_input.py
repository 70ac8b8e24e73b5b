"""Hostile or broken clients: each is answered or closed, counted by kind; the next is served."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time

import pytest

from tests.helpers import after_starttls_220, deliver, read_reply, starttls_socket
from tests.smtp_codes import S503_BAD_SEQUENCE, S552_TOO_BIG


def _client_hello() -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="receiver.tlsstorm.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def _closed_by_server(sock: socket.socket, within_s: float = 10) -> bool:
    """The server closed (FIN or reset) within `within_s`: False if it still holds on."""
    sock.settimeout(within_s)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def _next_client_is_served_quickly(port: int) -> float:
    started = time.monotonic()
    deliver(port, tls=False)
    return time.monotonic() - started


def test_garbage_after_starttls_ready_is_a_failed_handshake(receiver):
    sock = after_starttls_220(receiver.smtp_port)
    sock.sendall(b"\x00\xffTHIS IS NOT TLS\r\n" * 8)
    assert _closed_by_server(sock)
    sock.close()

    assert _next_client_is_served_quickly(receiver.smtp_port) < 1.0
    stats = receiver.wait_sessions(2)
    assert stats["tls"]["errors"]["handshake_failed"] == 1
    assert stats["tls"]["handshakes_failed"] == 1
    assert stats["plain"]["messages"] == 1


def test_plaintext_commands_after_starttls_ready_fail_the_handshake(receiver):
    sock = after_starttls_220(receiver.smtp_port)
    sock.sendall(b"MAIL FROM:<spammer@hostile.test>\r\n")
    assert _closed_by_server(sock)
    sock.close()

    stats = receiver.wait_sessions(1)
    assert stats["tls"]["errors"] == {"handshake_failed": 1}


def test_drop_mid_handshake_is_counted(receiver):
    sock = after_starttls_220(receiver.smtp_port)
    hello = _client_hello()
    sock.sendall(hello[: len(hello) // 2])
    sock.close()

    assert _next_client_is_served_quickly(receiver.smtp_port) < 1.0
    stats = receiver.wait_sessions(2)
    assert stats["tls"]["errors"] == {"handshake_dropped": 1}


@pytest.mark.parametrize("send_client_hello", [False, True], ids=["silence", "hello-then-silence"])
def test_handshake_that_never_completes_times_out(start_receiver, send_client_hello):
    receiver = start_receiver(handshake_timeout_s=0.5)
    sock = after_starttls_220(receiver.smtp_port)
    if send_client_hello:
        sock.sendall(_client_hello())
    assert _next_client_is_served_quickly(receiver.smtp_port) < 1.0
    started = time.monotonic()
    assert _closed_by_server(sock, within_s=5)
    assert time.monotonic() - started < 3
    sock.close()

    stats = receiver.wait_sessions(2)
    assert stats["tls"]["errors"] == {"handshake_timeout": 1}
    assert stats["tls"]["handshakes_failed"] == 1


def test_idle_session_is_closed_and_counted(start_receiver):
    receiver = start_receiver(idle_timeout_s=0.5)
    sock = socket.create_connection(("127.0.0.1", receiver.smtp_port))
    read_reply(sock)
    assert _closed_by_server(sock, within_s=5)
    sock.close()

    stats = receiver.wait_sessions(1)
    assert stats["plain"]["errors"] == {"idle_timeout": 1}


def test_oversized_message_gets_552_and_the_session_goes_on(start_receiver):
    receiver = start_receiver(max_message_bytes=1000)
    big = (b"x" * 70 + b"\r\n") * 40
    with smtplib.SMTP("127.0.0.1", receiver.smtp_port, local_hostname="client.test") as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "1000"
        # Declared with SIZE=: refused at MAIL FROM.
        with pytest.raises(smtplib.SMTPSenderRefused) as declared:
            client.sendmail("a@client.test", ["b@receiver.test"], big)
        assert declared.value.smtp_code == S552_TOO_BIG
        # Undeclared: the receiver reads the data and refuses it at the end.
        client.rset()
        client.docmd("MAIL FROM:<a@client.test>")
        client.docmd("RCPT TO:<b@receiver.test>")
        client.docmd("DATA")
        client.send(big + b".\r\n")
        code, _ = client.getreply()
        assert code == S552_TOO_BIG
        client.sendmail("a@client.test", ["b@receiver.test"], b"Subject: small\r\n\r\nok\r\n")

    stats = receiver.wait_sessions(1)
    assert stats["plain"]["messages"] == 1
    assert stats["plain"]["errors"] == {"protocol_error": 2}


def test_second_starttls_inside_tls_is_refused(receiver, any_cert_context):
    tls_sock = starttls_socket(receiver.smtp_port, any_cert_context)
    tls_sock.sendall(b"EHLO client.test\r\n")
    read_reply(tls_sock)
    tls_sock.sendall(b"STARTTLS\r\n")
    reply = read_reply(tls_sock)
    tls_sock.sendall(b"QUIT\r\n")
    read_reply(tls_sock)
    tls_sock.close()

    assert int(reply[:3]) == S503_BAD_SEQUENCE
    assert receiver.wait_sessions(1)["tls"]["handshakes_ok"] == 1
