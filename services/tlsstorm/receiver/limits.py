"""The limits all sessions of one receiver share, and what is in use of them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tlsstorm.receiver.gate import GatePolicy
from tlsstorm.receiver.memory import MemoryBudget


@dataclass(slots=True)
class SessionLimits:
    """Limits shared by every session of one receiver, and what is in use of them."""

    max_connections: int
    max_handshakes: int
    max_recipients: int
    # Pre-TLS policy, as postscreen-like defences apply it to known spam sources.
    refuse_starttls_from: tuple = ()
    reject_from: tuple = ()
    memory: MemoryBudget | None = None
    gate: GatePolicy | None = None  # the ClientHello gate, when on
    draining: bool = False  # the receiver is stopping: no new transaction (421)
    open_sessions: int = 0
    open_tls_sessions: int = 0  # of the open ones, those that issued STARTTLS
    handshakes: int = 0
    peak_sessions: int = 0
    peak_tls_sessions: int = 0
    # The most open at once, per mode, since the last take_interval_peaks (each second's
    # process span): sessions that open and close between two samples are seen.
    interval_peak_plain: int = 0
    interval_peak_tls: int = 0

    def opened(self) -> None:
        self.open_sessions += 1
        self.peak_sessions = max(self.peak_sessions, self.open_sessions)
        self.interval_peak_plain = max(self.interval_peak_plain,
                                       self.open_sessions - self.open_tls_sessions)

    def upgraded(self) -> None:
        self.open_tls_sessions += 1
        self.peak_tls_sessions = max(self.peak_tls_sessions, self.open_tls_sessions)
        self.interval_peak_tls = max(self.interval_peak_tls, self.open_tls_sessions)

    def take_interval_peaks(self) -> dict[str, int]:
        """The most plain and STARTTLS sessions open at once since the last call."""
        peaks = {"plain": self.interval_peak_plain, "tls": self.interval_peak_tls}
        self.interval_peak_plain = self.open_sessions - self.open_tls_sessions
        self.interval_peak_tls = self.open_tls_sessions
        return peaks

    def closed(self, tls: bool) -> None:
        self.open_sessions -= 1
        self.open_tls_sessions -= 1 if tls else 0

    def reset_peaks(self) -> None:
        self.peak_sessions, self.peak_tls_sessions = self.open_sessions, self.open_tls_sessions

    @staticmethod
    def _listed(address: str, networks: tuple) -> bool:
        if not networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    def refuses_starttls(self, address: str) -> bool:
        return self._listed(address, self.refuse_starttls_from)

    def rejects(self, address: str) -> bool:
        return self._listed(address, self.reject_from)
