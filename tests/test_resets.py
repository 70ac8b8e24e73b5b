"""A peer that resets its connection (a TCP RST) at any point of a session: the service counts
it as a reset and logs nothing, no traceback, no "Future exception was never retrieved", no
asyncio warning about writes after the loss (issue 30: `tlsstorm up`'s log held one).

The receiver runs as a process of its own (as in a pod) with the ClientHello gate enforcing, so
every STARTTLS session passes through the gate; its log is read after it has exited, since an
unretrieved future is reported when the garbage collector finalizes it, often at exit."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from tests.helpers import read_reply
from tests.locust_helpers import clean_env
from tests.receiver_process import ReceiverProcess, ServiceProcess

BODY = b"Subject: reset\r\n\r\n" + b"x" * 200_000 + b"\r\n"
ROUNDS = 4  # several sessions per point, so the collector's ordering varies between them


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def command(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return read_reply(sock)


def client_hello(tls12: bool = False) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    outgoing = ssl.MemoryBIO()
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="receiver.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def greeted(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert read_reply(sock).startswith(b"220")
    assert command(sock, b"EHLO resetter.test").startswith(b"250")
    return sock


def at_starttls(port: int) -> socket.socket:
    sock = greeted(port)
    assert command(sock, b"STARTTLS").startswith(b"220")
    return sock


def in_tls(port: int) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    sock = context.wrap_socket(at_starttls(port), server_hostname="receiver.test")
    assert command(sock, b"EHLO resetter.test").startswith(b"250")
    return sock


def mid_data(sock: socket.socket) -> None:
    for line in (b"MAIL FROM:<bot@resetter.test>", b"RCPT TO:<victim@receiver.test>", b"DATA"):
        command(sock, line)
    sock.sendall(BODY[: len(BODY) // 2])


def flood(sock: socket.socket) -> None:
    """Pipelined commands whose replies are never read: the receiver is still answering
    from its buffer when the reset comes."""
    sock.settimeout(0.5)
    with contextlib.suppress(OSError):
        sock.sendall(b"NOOP\r\n" * 200_000)


def plain_then_quit(sock: socket.socket) -> None:
    sock.sendall(b"QUIT\r\n")


def raw_then(port: int, then: Callable[[socket.socket], None]) -> socket.socket:
    sock = greeted(port)
    then(sock)
    return sock


def tls_then(port: int, then: Callable[[socket.socket], None]) -> socket.socket:
    sock = in_tls(port)
    then(sock)
    return sock


def hello_part(port: int, tls12: bool = False, share: float = 1.0) -> socket.socket:
    sock = at_starttls(port)
    hello = client_hello(tls12)
    sock.sendall(hello[: int(len(hello) * share)])
    return sock


# point: (how the client gets there, what the receiver counts: (mode, error kind or None))
POINTS: dict[str, tuple[Callable[[int], socket.socket], tuple[str, str | None]]] = {
    "before the greeting": (
        lambda port: socket.create_connection(("127.0.0.1", port)), ("plain", "reset")),
    "mid-command": (lambda port: raw_then(port, lambda s: s.sendall(b"MAIL FROM:<bot@res")),
                    ("plain", "reset")),
    "mid-DATA": (lambda port: raw_then(port, mid_data), ("plain", "reset")),
    "pipelined, replies unread": (lambda port: raw_then(port, flood), ("plain", "reset")),
    "after QUIT": (lambda port: raw_then(port, plain_then_quit), ("plain", None)),
    "at STARTTLS's 220": (at_starttls, ("tls", "handshake_reset")),
    "during the gate (half a hello)": (
        lambda port: hello_part(port, share=0.5), ("tls", "handshake_reset")),
    "mid-handshake (hello sent)": (hello_part, ("tls", "handshake_reset")),
    "refused by the gate": (
        lambda port: hello_part(port, tls12=True), ("tls", "handshake_gated")),
    "mid-command in TLS": (
        lambda port: tls_then(port, lambda s: s.sendall(b"RCPT TO:<v")), ("tls", "reset")),
    "mid-DATA in TLS": (lambda port: tls_then(port, mid_data), ("tls", "reset")),
    "pipelined in TLS, replies unread": (lambda port: tls_then(port, flood), ("tls", "reset")),
    "after QUIT in TLS": (lambda port: tls_then(port, plain_then_quit), ("tls", None)),
}
GATE = {"TLSSTORM_RECEIVER_GATE_MODE": "enforce", "TLSSTORM_RECEIVER_GATE_DENY_BELOW_TLS13": "true"}
LOG_MARKERS = ("Traceback", "never retrieved", "raised exception", "Exception", "Error")


def run_points(port: int) -> Counter:
    """Every point ROUNDS times; what the receiver should count, by (mode, kind)."""
    expected: Counter = Counter()
    for _ in range(ROUNDS):
        for reach, counted in POINTS.values():
            sock = reach(port)
            time.sleep(0.02)  # the receiver has read what was sent
            reset(sock)
            expected[counted] += 1
    return expected


def counted(stats: dict) -> Counter:
    seen: Counter = Counter()
    for mode in ("plain", "tls"):
        errors = sum(stats[mode]["errors"].values())
        seen.update({(mode, kind): count for kind, count in stats[mode]["errors"].items()})
        seen[mode, None] += stats[mode]["sessions"] - errors
    return +seen


def wait_ended(stats: Callable[[], dict], sessions: int) -> dict:
    deadline = time.monotonic() + 20
    while True:
        current = stats()
        if current["plain"]["sessions"] + current["tls"]["sessions"] >= sessions:
            return current
        assert time.monotonic() < deadline, current
        time.sleep(0.1)


def test_resets_at_every_point_are_counted_and_log_nothing():
    receiver = ReceiverProcess(clean_env(**GATE, TLSSTORM_RECEIVER_IDLE_TIMEOUT_S="10"))
    try:
        expected = run_points(receiver.smtp_port)
        stats = wait_ended(receiver.stats, sum(expected.values()))
        assert receiver.process.poll() is None
        # The receiver still serves a whole session afterwards.
        sock = greeted(receiver.smtp_port)
        assert command(sock, b"QUIT").startswith(b"221")
        sock.close()
    finally:
        receiver.stop()
    log = receiver.process.stderr.read()
    print(log)
    assert counted(stats) == expected
    assert not [line for line in log.splitlines() if any(m in line for m in LOG_MARKERS)], log


def test_no_future_is_left_holding_a_reset(start_receiver):
    """The same points against an in-process receiver; then no asyncio future in the process
    holds an error nobody read. Whether the garbage collector reports such a future depends on
    the order in which it finalizes the objects of a cycle, so the collector is held off while
    the sessions run and the futures are looked at directly."""
    receiver = start_receiver(gate_mode="enforce", gate_deny_below_tls13=True)
    gc.collect()
    gc.disable()
    try:
        expected = run_points(receiver.smtp_port)
        wait_ended(receiver.stats, sum(expected.values()))
        unread = [repr(future) for future in gc.get_objects()
                  if isinstance(future, asyncio.Future) and future._log_traceback]
    finally:
        gc.enable()
    assert unread == []


@pytest.mark.parametrize("service", ["collector", "receiver", "sender"])
def test_http_apis_take_resets_mid_request(service, tmp_path):
    """The collector's OTLP endpoint and the services' APIs (uvicorn, on asyncio's loop and on
    the sender's uvloop): resets mid-headers and mid-body, then a request is served, and
    nothing is logged."""
    process = {
        "collector": lambda: ServiceProcess("collector", clean_env(
            TLSSTORM_COLLECTOR_DB_PATH=str(tmp_path / "collector.sqlite"))),
        "receiver": lambda: ReceiverProcess(clean_env()),
        "sender": lambda: ServiceProcess("sender", clean_env()),
    }[service]()
    port = int(process.http.rsplit(":", 1)[1])
    path = {"collector": "/v1/traces", "receiver": "/v1/stats", "sender": "/v1/waves"}[service]
    try:
        for _ in range(ROUNDS):
            for request in (f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode(),
                            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                            "application/x-protobuf\r\nContent-Length: 100000\r\n\r\n".encode()
                            + b"\x0a" * 5000):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(request)
                time.sleep(0.02)
                reset(sock)
        assert httpx.get(f"{process.http}/readyz", timeout=10).status_code == 200
        if service == "collector":  # each body cut short is counted
            metrics = httpx.get(f"{process.http}/metrics", timeout=10).text
            assert f'tlsstorm_collector_requests_total{{status="499"}} {float(ROUNDS)}' in metrics
    finally:
        process.stop()
    log = process.process.stderr.read()
    assert not [line for line in log.splitlines() if any(m in line for m in LOG_MARKERS)], log
