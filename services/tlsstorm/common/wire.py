"""Bytes on the wire per connection, read from the kernel's TCP_INFO (TLS records included)."""

from __future__ import annotations

import socket
import struct

# Offsets into struct tcp_info (linux/tcp.h); stable ABI, appended to over kernel versions.
_BYTES_ACKED = 120
_BYTES_RECEIVED = 128
_NOTSENT_BYTES = 144
_BYTES_SENT = 200
_BYTES_RETRANS = 208
_TCP_INFO_SIZE = 256
# tcpi_state values that say the peer's FIN has arrived (its sequence number is then in
# bytes_received). TCP_CLOSE does not say: a reset ends there too.
_FIN_RECEIVED_STATES = {6, 8, 9, 11}  # TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING
_HAS_TCP_INFO = hasattr(socket, "TCP_INFO")


def wire_bytes(sock: socket.socket | None) -> tuple[int, int] | None:
    """(bytes received, bytes sent) of TCP payload so far, or None where the kernel can't say.

    Sent counts every unique payload byte the kernel has transmitted or still holds to
    transmit; retransmissions and TCP/IP headers are not included. Received leaves out the
    peer's FIN, which the kernel's count includes once it has arrived.
    """
    if sock is None or not _HAS_TCP_INFO:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _BYTES_RECEIVED + 8:
        return None
    received = struct.unpack_from("=Q", info, _BYTES_RECEIVED)[0]
    if info[0] in _FIN_RECEIVED_STATES:
        received -= 1  # the FIN takes a sequence number, not a payload byte
    if len(info) >= _BYTES_RETRANS + 8:
        sent = struct.unpack_from("=Q", info, _BYTES_SENT)[0]
        sent -= struct.unpack_from("=Q", info, _BYTES_RETRANS)[0]
        sent += struct.unpack_from("=I", info, _NOTSENT_BYTES)[0]
    else:
        sent = struct.unpack_from("=Q", info, _BYTES_ACKED)[0]
    return received, sent
