"""SSL contexts, built once per process and reused for every session."""

from __future__ import annotations

import ssl
import tempfile
import time
from pathlib import Path

from tlsstorm.common.pki import CertificatePair

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(
    pair: CertificatePair,
    min_version: str = "1.2",
    max_version: str = "1.3",
    session_tickets: bool = True,
) -> ssl.SSLContext:
    """The receiver's context: no client certificates, tickets as configured."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[min_version]
    context.maximum_version = TLS_VERSIONS[max_version]
    # load_cert_chain reads files only; the key never outlives this block on disk.
    with tempfile.TemporaryDirectory(prefix="tlsstorm-cert-") as folder:
        cert_path, key_path = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_path.write_bytes(pair.cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(pair.key_pem)
        context.load_cert_chain(cert_path, key_path)
    if session_tickets:
        context.num_tickets = 2
    else:
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
        _turn_off_session_cache(context)
    return context


_SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_CTRL_GET_SESS_CACHE_MODE = 44, 45  # OpenSSL's ssl.h
_SSL_SESS_CACHE_OFF = 0


def _turn_off_session_cache(context: ssl.SSLContext) -> None:
    """No resumption at all: without tickets, TLS 1.2 clients still resume by session ID from
    the server's cache, which Python's ssl keeps on and offers no setting for.

    OpenSSL's SSL_CTX_set_session_cache_mode is a macro over SSL_CTX_ctrl, reached through the
    library the ssl module is linked with; the SSL_CTX is the first field after the object
    header of CPython's SSLContext (stable since 3.x). The mode is read back to be sure.
    """
    import _ssl
    import ctypes

    ctrl = ctypes.CDLL(_ssl.__file__).SSL_CTX_ctrl
    ctrl.restype = ctypes.c_long
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    ssl_ctx = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    ctrl(ssl_ctx, _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_OFF, None)
    if ctrl(ssl_ctx, _SSL_CTRL_GET_SESS_CACHE_MODE, 0, None) != _SSL_SESS_CACHE_OFF:
        raise RuntimeError("could not turn off OpenSSL's session cache")


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """The sender's context: verify against a CA bundle when given, else accept any (bots do)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile=str(ca_file))
    return context


class TimedSSLObject(ssl.SSLObject):
    """Remembers when its handshake began and ended, so the receiver (and the sender's
    reference engine) can time it exactly (the compiled engine times its own, in C).

    asyncio's SSLProtocol calls do_handshake() first when the handshake starts (the server
    starts waiting for a ClientHello) and last when it completes.
    """

    handshake_started_ns: int = 0
    handshake_started_perf_ns: int = 0
    handshake_ended_perf_ns: int = 0

    def do_handshake(self) -> None:
        if not self.handshake_started_perf_ns:
            self.handshake_started_ns = time.time_ns()
            self.handshake_started_perf_ns = time.perf_counter_ns()
        super().do_handshake()
        self.handshake_ended_perf_ns = time.perf_counter_ns()

    @property
    def handshake_ms(self) -> float | None:
        if not self.handshake_ended_perf_ns:
            return None
        return (self.handshake_ended_perf_ns - self.handshake_started_perf_ns) / 1e6


def timed(context: ssl.SSLContext) -> ssl.SSLContext:
    context.sslobject_class = TimedSSLObject
    return context
