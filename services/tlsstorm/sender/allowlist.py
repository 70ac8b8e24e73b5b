"""Where the sender may aim: checked after DNS resolution, and the checked address is used."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

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


def split_host_port(text: str, default_port: int = 25) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"target {text!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"target {text!r} has a bad port: use host:port with port 1-65535")
    return host, int(port_text)


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

    async def _addresses(self, host: str, port: int) -> frozenset[str]:
        loop = asyncio.get_running_loop()
        cached = self._resolved.get(host)
        if cached and loop.time() - cached[0] < _RESOLVE_TTL_S:
            return cached[1]
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise TargetRefused(f"cannot resolve {host!r}: {error}") from None
        addresses = frozenset(info[4][0] for info in infos)
        self._resolved[host] = (loop.time(), addresses)
        return addresses

    async def _allowed(self, address: str, port: int) -> bool:
        ip = ipaddress.ip_address(address)
        if any(ip in network for network in self._networks):
            return True
        for host, allowed_port in self._hosts:
            if allowed_port not in (None, port):
                continue
            try:
                if address in await self._addresses(host, port):
                    return True
            except TargetRefused:
                continue
        return False

    async def check(self, target_text: str) -> Target:
        """The target with the address to connect to, or TargetRefused saying why."""
        try:
            host, port = split_host_port(target_text)
        except ValueError as error:
            raise TargetRefused(str(error)) from None
        addresses = await self._addresses(host, port)
        for address in sorted(addresses):
            if not await self._allowed(address, port):
                raise TargetRefused(
                    f"target {host}:{port} resolves to {address}, which is not allowed; "
                    f"allowed: {', '.join(self.entries)} (set TLSSTORM_ALLOWED_TARGETS)"
                )
        return Target(host=host, port=port, address=sorted(addresses)[0])
