"""Bytes on the wire: exact for a plain dialogue, and a STARTTLS session pays at least its cert."""

from __future__ import annotations

import socket

import httpx

from tests.helpers import read_reply, starttls_socket

DIALOGUE = [
    b"EHLO client.test\r\n",
    b"MAIL FROM:<spammer@client.test>\r\n",
    b"RCPT TO:<victim@receiver.tlsstorm.test>\r\n",
    b"DATA\r\n",
    b"Subject: wire\r\n\r\n" + b"spam spam spam\r\n" * 64 + b".\r\n",
    b"QUIT\r\n",
]


def _converse(sock) -> tuple[int, int]:
    """Speak DIALOGUE; return (bytes sent, bytes received) including the server's close."""
    sent = received = 0
    for line in DIALOGUE:
        sock.sendall(line)
        sent += len(line)
        received += len(read_reply(sock))
    while chunk := sock.recv(4096):
        received += len(chunk)
    return sent, received


def test_plain_session_wire_bytes_equal_the_dialogue(receiver):
    sock = socket.create_connection(("127.0.0.1", receiver.smtp_port))
    greeting = len(read_reply(sock))
    sent, received = _converse(sock)
    sock.close()

    stats = receiver.wait_sessions(1)["plain"]

    assert stats["wire_bytes_in"] == sent
    assert stats["wire_bytes_out"] == greeting + received


def test_starttls_session_costs_at_least_the_certificate_more(receiver, any_cert_context):
    plain = socket.create_connection(("127.0.0.1", receiver.smtp_port))
    read_reply(plain)
    _converse(plain)
    plain.close()
    tls = starttls_socket(receiver.smtp_port, any_cert_context)
    _converse(tls)
    tls.close()

    stats = receiver.wait_sessions(2)
    cert_der_bytes = httpx.get(f"{receiver.http}/v1/tls").json()["cert_der_bytes"]

    plain_total = stats["plain"]["wire_bytes_in"] + stats["plain"]["wire_bytes_out"]
    tls_total = stats["tls"]["wire_bytes_in"] + stats["tls"]["wire_bytes_out"]
    assert tls_total - plain_total >= cert_der_bytes
    assert stats["tls"]["wire_bytes_out"] - stats["plain"]["wire_bytes_out"] >= cert_der_bytes


def test_sender_and_receiver_agree_on_wire_bytes(sender, receiver):
    results = httpx.post(f"{sender.http}/v1/send", json={"tls": True, "count": 1},
                         timeout=30).json()["results"]

    stats = receiver.wait_sessions(1)["tls"]

    # The receiver also counts what the sender sends after reading 221 (its TLS close_notify).
    assert 0 <= stats["wire_bytes_in"] - results[0]["bytes_sent"] <= 64
    assert 0 <= stats["wire_bytes_out"] - results[0]["bytes_received"] <= 64


def test_a_client_that_closes_first_is_counted_without_its_fin(receiver):
    """The kernel's bytes_received takes in the peer's FIN once it arrives; a client that ends
    the session by closing (no QUIT) is counted for its payload only."""
    sock = socket.create_connection(("127.0.0.1", receiver.smtp_port))
    read_reply(sock)
    sent = 0
    for line in DIALOGUE[:-1]:
        sock.sendall(line)
        sent += len(line)
        read_reply(sock)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(4096):
        pass
    sock.close()

    stats = receiver.wait_sessions(1)["plain"]

    assert stats["wire_bytes_in"] == sent
