"""Hostile clients against a live receiver: each gets the right reply or a clean close, is
counted by kind, a normal client is served within 1 s while it happens, and memory stays bounded.

Run with `-s` to see the matrix (case, reply, counted as, served within, RSS growth).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from tests.helpers import deliver, read_replies, read_reply
from tests.locust_helpers import clean_env
from tests.receiver_process import ReceiverProcess

MAX_RSS_GROWTH = 150 * 1024 * 1024
LIMITS = {"idle_timeout_s": 2, "data_timeout_s": 2, "handshake_timeout_s": 1,
          "max_message_bytes": 5_000_000, "max_recipients": 100}


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    read_reply(sock)
    return sock


def _after_starttls_ready(port: int) -> socket.socket:
    sock = _connect(port)
    sock.sendall(b"EHLO hostile.test\r\n")
    read_reply(sock)
    sock.sendall(b"STARTTLS\r\n")
    assert read_reply(sock).startswith(b"220")
    return sock


def _client_hello() -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="receiver")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def _until_closed(sock: socket.socket) -> str:
    """"closed" when the receiver closes (FIN or reset) before the socket's timeout, else
    "still open": what really happened, for the case to check."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        sock.close()
        return "still open"
    sock.close()
    return "closed"


def garbage_after_starttls(port: int) -> str:
    sock = _after_starttls_ready(port)
    sock.sendall(b"\x00\xff this is not a ClientHello \r\n" * 20)
    return _until_closed(sock)


def hello_then_silence(port: int) -> str:
    sock = _after_starttls_ready(port)
    sock.sendall(_client_hello())
    return _until_closed(sock)


def drop_mid_handshake(port: int) -> str:
    sock = _after_starttls_ready(port)
    hello = _client_hello()
    sock.sendall(hello[: len(hello) // 3])
    sock.close()
    return "dropped by client"


def plaintext_after_starttls(port: int) -> str:
    sock = _after_starttls_ready(port)
    sock.sendall(b"MAIL FROM:<a@hostile.test>\r\nRCPT TO:<b@receiver.test>\r\n")
    return _until_closed(sock)


def _tls(port: int) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context.wrap_socket(_after_starttls_ready(port), server_hostname="receiver")


def _reply_to(sock: socket.socket, command: bytes, after: tuple[bytes, ...] = ()) -> str:
    """The reply to `command`, sent once each of `after` is answered; then QUIT."""
    for line in after:
        sock.sendall(line)
        read_reply(sock)
    sock.sendall(command)
    reply = read_reply(sock)
    sock.sendall(b"QUIT\r\n")
    read_reply(sock)
    return reply.decode().strip()


def starttls_twice(port: int) -> str:
    return _reply_to(_tls(port), b"STARTTLS\r\n", after=(b"EHLO hostile.test\r\n",))


def starttls_after_mail(port: int) -> str:
    return _reply_to(_connect(port), b"STARTTLS\r\n",
                     after=(b"EHLO hostile.test\r\n", b"MAIL FROM:<a@hostile.test>\r\n"))


def idle_connections(port: int, count: int = 500) -> str:
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(count)]
    closed = sum(_until_closed(sock) == "closed" for sock in sockets)
    return f"{closed} of {count} closed by idle timeout"


def slowloris_data(port: int) -> str:
    sock = _connect(port)
    sock.sendall(b"EHLO hostile.test\r\nMAIL FROM:<a@hostile.test>\r\n"
                 b"RCPT TO:<b@receiver.test>\r\nDATA\r\n")
    read_replies(sock, 4)
    try:
        for _ in range(100):  # one byte every 0.1 s, far slower than any real client
            sock.sendall(b"x")
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return _until_closed(sock)


def huge_data(port: int) -> str:
    sock = _connect(port)
    sock.sendall(b"EHLO hostile.test\r\nMAIL FROM:<a@hostile.test>\r\nRCPT TO:<b@r.test>\r\n"
                 b"DATA\r\n")
    read_replies(sock, 4)
    line = b"y" * 998 + b"\r\n"
    for _ in range(10_000):  # 10 MB
        sock.sendall(line)
    sock.sendall(b".\r\n")
    reply = read_reply(sock)
    sock.sendall(b"QUIT\r\n")
    read_reply(sock)
    return reply.decode().strip()


def many_recipients(port: int) -> str:
    sock = _connect(port)
    sock.sendall(b"EHLO hostile.test\r\nMAIL FROM:<a@hostile.test>\r\n")
    read_replies(sock, 2)
    batch = b"".join(b"RCPT TO:<r%d@receiver.test>\r\n" % n for n in range(10_000))
    sender = threading.Thread(target=sock.sendall, args=(batch,))
    sender.start()
    replies: dict[str, int] = {}
    for reply in read_replies(sock, 10_000):
        replies[reply[:3].decode()] = replies.get(reply[:3].decode(), 0) + 1
    sender.join()
    sock.sendall(b"QUIT\r\n")
    read_reply(sock)
    return ", ".join(f"{count} x {code}" for code, count in sorted(replies.items()))


def long_command_line(port: int) -> str:
    return _reply_to(_connect(port), b"EHLO " + b"h" * 5000 + b"\r\n")


def nul_and_invalid_utf8(port: int) -> str:
    sock = _connect(port)
    sock.sendall(b"EH\x00LO \xff\xfe\xfd\r\n")
    first = read_reply(sock)
    sock.sendall(b"MAIL FROM:<\xc3\x28@hostile.test>\r\n")
    second = read_reply(sock)
    sock.sendall(b"QUIT\r\n")
    read_reply(sock)
    return f"{first[:3].decode()} / {second[:3].decode()}"


def pipelined_flood(port: int) -> str:
    sock = _connect(port)
    flood = b"NOOP\r\n" * 20_000
    sender = threading.Thread(target=sock.sendall, args=(flood,))
    sender.start()
    answered = 0
    buffer = b""
    while answered < 20_000:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
        answered += buffer.count(b"\r\n")
        buffer = buffer[buffer.rfind(b"\r\n") + 2:]
    sender.join()
    sock.close()
    return f"{answered} NOOPs answered"


@dataclass(frozen=True)
class Case:
    attack: Callable[[int], str]
    reply: str  # what the hostile client must see (substring)
    counted_as: dict[str, int]  # errors by kind in /v1/stats, plain and tls together (at least)
    limits: dict[str, float] = field(default_factory=dict)  # over LIMITS for this case


CASES = {
    "garbage after STARTTLS 220": Case(garbage_after_starttls, "closed", {"handshake_failed": 1}),
    "ClientHello then silence": Case(hello_then_silence, "closed", {"handshake_timeout": 1}),
    "drop mid-handshake": Case(drop_mid_handshake, "dropped", {"handshake_dropped": 1}),
    "plaintext after STARTTLS 220": Case(plaintext_after_starttls, "closed",
                                         {"handshake_failed": 1}),
    "STARTTLS twice": Case(starttls_twice, "503", {"protocol_error": 1}),
    "STARTTLS after MAIL": Case(starttls_after_mail, "503", {"protocol_error": 1}),
    "500 idle connections": Case(idle_connections, "500 of 500 closed", {"idle_timeout": 500}),
    "slowloris DATA": Case(slowloris_data, "closed", {"data_timeout": 1}),
    # The DATA deadline covers the whole phase: give 10 MB the time a busy machine needs.
    "10 MB DATA": Case(huge_data, "552", {"protocol_error": 1}, {"data_timeout_s": 30}),
    "10,000 RCPT": Case(many_recipients, "9900 x 452", {"too_many_recipients": 1}),
    "command line over 1,000 bytes": Case(long_command_line, "500", {"protocol_error": 1}),
    "NUL bytes and invalid UTF-8": Case(nul_and_invalid_utf8, "500 / 500", {"protocol_error": 2}),
    "pipelined command flood": Case(pipelined_flood, "20000 NOOPs answered", {}),
}


def _errors(stats: dict) -> dict[str, int]:
    merged: dict[str, int] = {}
    for mode in ("plain", "tls"):
        for kind, count in stats[mode]["errors"].items():
            merged[kind] = merged.get(kind, 0) + count
    return merged


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_client(name):
    """The receiver as a process of its own, so the memory bound is its RSS, not this one's."""
    case = CASES[name]
    receiver = ReceiverProcess(clean_env(**{
        f"TLSSTORM_RECEIVER_{key.upper()}": str(value)
        for key, value in {**LIMITS, **case.limits}.items()}))
    try:
        _attack(receiver, case, name)
    finally:
        receiver.stop()


def _attack(receiver: ReceiverProcess, case: Case, name: str) -> None:
    rss_before = receiver.stats()["process"]["rss_bytes"]
    outcome: dict[str, str] = {}
    attacker = threading.Thread(target=lambda: outcome.update(reply=case.attack(
        receiver.smtp_port)))
    attacker.start()
    time.sleep(0.3)  # let the attack get under way
    started = time.monotonic()
    deliver(receiver.smtp_port, tls=False)
    served_s = time.monotonic() - started
    attacker.join(60)
    assert not attacker.is_alive(), "the attack did not end"

    stats = httpx.get(f"{receiver.http}/v1/stats").json()
    deadline = time.monotonic() + 10
    while any(_errors(stats).get(kind, 0) < count for kind, count in case.counted_as.items()):
        assert time.monotonic() < deadline, _errors(stats)
        time.sleep(0.1)
        stats = httpx.get(f"{receiver.http}/v1/stats").json()
    rss_growth = stats["process"]["rss_bytes"] - rss_before
    print(f"\n| {name} | {outcome.get('reply')} | {_errors(stats)} | {served_s * 1000:.0f} ms "
          f"| +{rss_growth / 2**20:.1f} MiB |")

    assert case.reply in outcome["reply"]
    for kind, count in case.counted_as.items():
        assert _errors(stats).get(kind, 0) >= count, (kind, _errors(stats))
    assert served_s < 1.0
    assert stats["plain"]["messages"] >= 1
    assert rss_growth < MAX_RSS_GROWTH


def test_connections_over_the_limit_get_421_and_are_counted(start_receiver):
    receiver = start_receiver(max_connections=3, idle_timeout_s=5)
    held = [_connect(receiver.smtp_port) for _ in range(3)]
    refused = socket.create_connection(("127.0.0.1", receiver.smtp_port), timeout=5)

    assert read_reply(refused).startswith(b"421")
    _until_closed(refused)
    for sock in held:
        sock.close()
    time.sleep(0.3)
    deliver(receiver.smtp_port, tls=False)
    assert _errors(receiver.wait_sessions(5))["too_many_connections"] == 1


def test_handshakes_over_the_limit_are_deferred_with_454(start_receiver):
    receiver = start_receiver(max_handshakes=1, handshake_timeout_s=3)
    stuck = _after_starttls_ready(receiver.smtp_port)  # holds the only handshake slot
    sock = _connect(receiver.smtp_port)
    sock.sendall(b"EHLO hostile.test\r\n")
    read_reply(sock)
    sock.sendall(b"STARTTLS\r\n")

    assert read_reply(sock).startswith(b"454")
    sock.close()
    stuck.close()
    assert _errors(receiver.wait_sessions(2))["handshake_busy"] == 1
