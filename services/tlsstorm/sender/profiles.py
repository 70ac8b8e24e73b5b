"""Client TLS personalities: how bots and real MTAs differ on the wire (TLS library, SNI or
none, TLS 1.2 only or 1.2-1.3, cipher lists and orders, session tickets), each one client
configuration built once, and mixes of them spread exactly over a wave's STARTTLS connections.

A profile's TLS stack is OpenSSL (Python's ssl configures it; Postfix and old bot libraries
speak it) or rustls (the engine's own, engine/rustls_client: a modern client library, with half
OpenSSL 3.0's CPU per handshake, so the default profile leaves the sender the headroom it needs
to outrun its receiver). rustls speaks AEAD suites only, so CBC and RSA key exchange stay
OpenSSL's."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tlsstorm.common.tls import client_context
from tlsstorm.sender.engine import RustlsConfig


@dataclass(frozen=True)
class Profile:
    description: str
    sni: bool = True
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: str | None = None  # OpenSSL cipher string for TLS 1.2 (None: OpenSSL's default)
    tickets: bool = True
    stack: Literal["openssl", "rustls"] = "openssl"  # rustls: ciphers None (its AEAD suites)


PROFILES = {
    "default": Profile("a modern client library (rustls): SNI, TLS 1.2-1.3, AEAD ciphers",
                       stack="rustls"),
    "openssl": Profile("Python's ssl as configured: SNI, TLS 1.2-1.3, OpenSSL's ciphers"),
    "mta": Profile("an MTA like Postfix: SNI, TLS 1.2-1.3, strong ciphers only, no tickets",
                   ciphers="ECDHE+AESGCM:ECDHE+CHACHA20", tickets=False),
    "bot-nosni": Profile("a bot that names no server (rustls): TLS 1.2-1.3, no SNI",
                         sni=False, stack="rustls"),
    "bot-tls12": Profile("an old bot library: TLS 1.2 at most, no SNI, CBC first",
                         sni=False, max_version=ssl.TLSVersion.TLSv1_2,
                         ciphers="ECDHE-RSA-AES128-SHA:AES128-SHA:AES256-SHA:ECDHE+AESGCM"),
    "bot-legacy": Profile("Rustock-era: TLS 1.2 at most, no SNI, RSA key exchange, no tickets",
                          sni=False, max_version=ssl.TLSVersion.TLSv1_2,
                          ciphers="AES256-SHA:AES128-SHA:DES-CBC3-SHA", tickets=False),
}


def engine_tls(name: str, ca_file: Path | None) -> ssl.SSLContext | RustlsConfig:
    """What the sender's engine speaks TLS with for that profile."""
    profile = PROFILES[name]
    if profile.stack == "rustls":
        return RustlsConfig(ca_file, tls13=profile.max_version == ssl.TLSVersion.TLSv1_3,
                            tickets=profile.tickets, sni=profile.sni)
    return profile_context(name, ca_file)


def profile_context(name: str, ca_file: Path | None) -> ssl.SSLContext:
    """The profile's settings in Python's ssl (OpenSSL): what the engine speaks for an OpenSSL
    profile, and the nearest OpenSSL client to a rustls one (for clients that need Python's
    ssl)."""
    profile = PROFILES[name]
    context = client_context(ca_file)
    context.maximum_version = profile.max_version
    if profile.ciphers:
        context.set_ciphers(profile.ciphers)
    if not profile.tickets:
        context.options |= ssl.OP_NO_TICKET
    if not profile.sni:
        context.check_hostname = False  # nothing named, nothing to check (the chain still is)
    return context


class ProfileMix:
    """Picks each connection's profile so that the shares hold exactly as connections go:
    the next is the one furthest behind its share."""

    def __init__(self, shares: dict[str, float]) -> None:
        total = sum(shares.values())
        self.shares = {name: share / total for name, share in shares.items() if share > 0}
        self.used = dict.fromkeys(self.shares, 0)
        self.count = 0

    def next(self) -> str:
        self.count += 1
        name = max(self.shares, key=lambda n: self.shares[n] * self.count - self.used[n])
        self.used[name] += 1
        return name
