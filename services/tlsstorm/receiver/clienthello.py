"""The TLS ClientHello as it arrives after STARTTLS, before OpenSSL sees it: reassembled from
records and segments, parsed with every length checked, and fingerprinted as JA4 (FoxIO's
published specification; tests/test_gate.py checks it against the ja4plus implementation).

Why by hand: the maintained Python JA4 code (ja4plus) reads scapy packets, and importing scapy
would cost the receiver a second of start-up and tens of MiB per process; the part needed here,
one ClientHello from a byte stream, is a hundred lines."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

HANDSHAKE_RECORD = 0x16
CLIENT_HELLO = 0x01
MAX_HELLO_BYTES = 16 * 1024  # a real one is a few KiB, even with post-quantum key shares
_SNI, _ALPN, _SIGNATURE_ALGORITHMS, _SUPPORTED_VERSIONS = 0x0000, 0x0010, 0x000D, 0x002B
_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3",
             0x0002: "s2", 0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}


class HelloError(ValueError):
    """Not a ClientHello we can read: `kind` is what is counted (malformed, oversized)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def is_grease(value: int) -> bool:
    """RFC 8701's reserved values (0x0a0a, 0x1a1a, ... 0xfafa) that clients sprinkle in."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


@dataclass(frozen=True)
class ClientHello:
    legacy_version: int
    ciphers: list[int]
    extensions: list[int]  # types, in the order sent
    server_name: str | None
    alpn: list[bytes] = field(default_factory=list)
    supported_versions: list[int] = field(default_factory=list)
    signature_algorithms: list[int] = field(default_factory=list)

    @property
    def highest_version(self) -> int:
        offered = [v for v in self.supported_versions if not is_grease(v)]
        return max(offered) if offered else self.legacy_version

    def ja4(self) -> str:
        ciphers = [c for c in self.ciphers if not is_grease(c)]
        extensions = [e for e in self.extensions if not is_grease(e)]
        part_a = (f"t{_VERSIONS.get(self.highest_version, '00')}"
                  f"{'d' if _SNI in extensions else 'i'}{min(len(ciphers), 99):02d}"
                  f"{min(len(extensions), 99):02d}{_alpn_code(self.alpn)}")
        part_b = _hash12(",".join(f"{c:04x}" for c in sorted(ciphers))) if ciphers else \
            "000000000000"
        hashed = sorted(e for e in extensions if e not in (_SNI, _ALPN))
        text = ",".join(f"{e:04x}" for e in hashed)
        algorithms = [a for a in self.signature_algorithms if not is_grease(a)]
        if algorithms:
            text += "_" + ",".join(f"{a:04x}" for a in algorithms)
        part_c = _hash12(text) if hashed else "000000000000"
        return f"{part_a}_{part_b}_{part_c}"


class HelloReader:
    """Collects bytes until a whole ClientHello has arrived (or it cannot be one)."""

    def __init__(self) -> None:
        self.raw = bytearray()  # everything received, to hand on to OpenSSL unchanged
        self._message = bytearray()  # the handshake message, from the records' payloads
        self._parsed_to = 0

    def feed(self, data: bytes) -> ClientHello | None:
        """The hello once complete, else None; HelloError if the bytes cannot be one."""
        self.raw += data
        raw = self.raw
        while len(raw) - self._parsed_to >= 5:
            start = self._parsed_to
            if raw[start] != HANDSHAKE_RECORD:
                raise HelloError("malformed", f"record type {raw[start]:#04x} before the "
                                 "ClientHello (not TLS, or not a handshake)")
            length = int.from_bytes(raw[start + 3:start + 5], "big")
            if length == 0 or length > MAX_HELLO_BYTES + 256:
                raise HelloError("malformed", f"handshake record of {length} bytes")
            if len(raw) - start - 5 < length:
                break
            self._message += raw[start + 5:start + 5 + length]
            self._parsed_to = start + 5 + length
            if len(self._message) > MAX_HELLO_BYTES + 4:
                raise HelloError("oversized", f"ClientHello over {MAX_HELLO_BYTES} bytes")
        if len(self.raw) > 2 * MAX_HELLO_BYTES:
            raise HelloError("oversized", f"ClientHello over {MAX_HELLO_BYTES} bytes")
        message = self._message
        if len(message) < 4:
            return None
        if message[0] != CLIENT_HELLO:
            raise HelloError("malformed", f"handshake message {message[0]} instead of a "
                             "ClientHello")
        body_length = int.from_bytes(message[1:4], "big")
        if body_length > MAX_HELLO_BYTES:
            raise HelloError("oversized", f"ClientHello of {body_length} bytes")
        if len(message) < 4 + body_length:
            return None
        return parse_client_hello(bytes(message[4:4 + body_length]))


def parse_client_hello(body: bytes) -> ClientHello:
    reader = _Reader(body)
    legacy_version = reader.uint(2)
    reader.skip(32)  # random
    reader.skip(reader.uint(1))  # legacy session id
    cipher_bytes = reader.take(reader.uint(2))
    if len(cipher_bytes) % 2:
        raise HelloError("malformed", "odd cipher suite list")
    ciphers = [int.from_bytes(cipher_bytes[i:i + 2], "big")
               for i in range(0, len(cipher_bytes), 2)]
    reader.skip(reader.uint(1))  # compression methods
    extensions: list[int] = []
    server_name = None
    alpn: list[bytes] = []
    versions: list[int] = []
    algorithms: list[int] = []
    if reader.remaining:
        block = _Reader(reader.take(reader.uint(2)))
        while block.remaining:
            kind = block.uint(2)
            data = _Reader(block.take(block.uint(2)))
            extensions.append(kind)
            if kind == _SNI and data.remaining:
                names = _Reader(data.take(data.uint(2)))
                while names.remaining:
                    name_type, name = names.uint(1), names.take(names.uint(2))
                    if name_type == 0:
                        server_name = name.decode("ascii", "replace")
            elif kind == _ALPN and data.remaining:
                protocols = _Reader(data.take(data.uint(2)))
                while protocols.remaining:
                    alpn.append(protocols.take(protocols.uint(1)))
            elif kind == _SUPPORTED_VERSIONS and data.remaining:
                listed = data.take(data.uint(1))
                versions = [int.from_bytes(listed[i:i + 2], "big")
                            for i in range(0, len(listed) - 1, 2)]
            elif kind == _SIGNATURE_ALGORITHMS and data.remaining:
                listed = data.take(data.uint(2))
                algorithms = [int.from_bytes(listed[i:i + 2], "big")
                              for i in range(0, len(listed) - 1, 2)]
    return ClientHello(legacy_version, ciphers, extensions, server_name, alpn, versions,
                       algorithms)


class _Reader:
    """Bounds-checked reads: a length past the end is a malformed hello, never an IndexError."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._at

    def take(self, count: int) -> bytes:
        if count > self.remaining:
            raise HelloError("malformed", f"a field of {count} bytes runs past the hello")
        chunk = self._data[self._at:self._at + count]
        self._at += count
        return chunk

    def skip(self, count: int) -> None:
        self.take(count)

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")


def _alpn_code(alpn: list[bytes]) -> str:
    """JA4's two ALPN characters: first and last byte of the first value ("00" for none;
    printable ASCII as itself, a byte of 0x80 or more as 9, a control byte at either end 99)."""
    if not alpn or not alpn[0]:
        return "00"
    ends = []
    for byte in (alpn[0][0], alpn[0][-1]):
        if 0x20 <= byte <= 0x7E:
            ends.append(chr(byte))
        elif byte >= 0x80:
            ends.append("9")
        else:
            return "99"
    return "".join(ends)


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]
