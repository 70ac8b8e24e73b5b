"""Where the sender may aim: checked after DNS resolution, and the checked address is used."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from dataclasses import dataclass

from tlsstorm.common.address import split_host_port

LOOPBACK = ("127.0.0.0/8", "::1/128")
_RESOLVE_TTL_S = 30.0


class TargetRefused(Exception):
    """The target is outside the allowlist or cannot be resolved; nothing was sent."""


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    address: str

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


class Allowlist:
    """Entries are CIDRs (any port), host:port, or host (any port)."""

    def __init__(self, entries: list[str], default_target: str) -> None:
        if not entries:
            entries = [default_target, *LOOPBACK]
        self.entries = list(entries)
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._hosts: list[tuple[str, int | None]] = []
        for entry in entries:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            host, port = split_host_port(entry, default_port=0)
            self._hosts.append((host, port or None))
        self._resolved: dict[str, tuple[float, frozenset[str]]] = {}

    def _cached(self, host: str, now: float) -> frozenset[str] | None:
        cached = self._resolved.get(host)
        if cached and now - cached[0] < _RESOLVE_TTL_S:
            return cached[1]
        return None

    async def _resolve(self, host: str, port: int) -> frozenset[str]:
        loop = asyncio.get_running_loop()
        cached = self._cached(host, time.monotonic())
        if cached is not None:
            return cached
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as error:
            raise TargetRefused(f"cannot resolve {host!r}: {error}") from None
        return self._remember(host, infos)

    def _resolve_blocking(self, host: str, port: int) -> frozenset[str]:
        cached = self._cached(host, time.monotonic())
        if cached is not None:
            return cached
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as error:
            raise TargetRefused(f"cannot resolve {host!r}: {error}") from None
        return self._remember(host, infos)

    def _remember(self, host: str, infos) -> frozenset[str]:
        addresses = frozenset(info[4][0] for info in infos)
        self._resolved[host] = (time.monotonic(), addresses)
        return addresses

    def _hosts_for(self, port: int) -> list[str]:
        return [host for host, allowed_port in self._hosts if allowed_port in (None, port)]

    def _verdict(self, host: str, port: int, addresses: frozenset[str],
                 allowed_hosts: dict[str, frozenset[str]]) -> Target:
        """Every address the target resolves to must be allowed; connect to the first."""
        named = frozenset().union(*allowed_hosts.values()) if allowed_hosts else frozenset()
        for address in sorted(addresses):
            ip = ipaddress.ip_address(address)
            if not (any(ip in network for network in self._networks) or address in named):
                raise TargetRefused(
                    f"target {host}:{port} resolves to {address}, which is not allowed; "
                    f"allowed: {', '.join(self.entries)} (set TLSSTORM_ALLOWED_TARGETS)"
                )
        return Target(host=host, port=port, address=sorted(addresses)[0])

    @staticmethod
    def _parse(target_text: str) -> tuple[str, int]:
        try:
            return split_host_port(target_text)
        except ValueError as error:
            raise TargetRefused(str(error)) from None

    async def check(self, target_text: str) -> Target:
        """The target with the address to connect to, or TargetRefused saying why."""
        host, port = self._parse(target_text)
        addresses = await self._resolve(host, port)
        allowed_hosts = {}
        for allowed in self._hosts_for(port):
            with contextlib.suppress(TargetRefused):
                allowed_hosts[allowed] = await self._resolve(allowed, port)
        return self._verdict(host, port, addresses, allowed_hosts)

    def check_blocking(self, target_text: str) -> Target:
        """The same check for synchronous callers (Locust's gevent users)."""
        host, port = self._parse(target_text)
        addresses = self._resolve_blocking(host, port)
        allowed_hosts = {}
        for allowed in self._hosts_for(port):
            with contextlib.suppress(TargetRefused):
                allowed_hosts[allowed] = self._resolve_blocking(allowed, port)
        return self._verdict(host, port, addresses, allowed_hosts)
