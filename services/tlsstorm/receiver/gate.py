"""The ClientHello gate: after STARTTLS, read the client's hello before OpenSSL does, and either
hand it on or end the handshake with an alert before the server signs or derives anything.

Modes: off (no parsing), learn (fingerprint and count what the policy would deny, refuse
nothing), enforce. Rules, first match wins: the allow list, the deny list (JA4 fingerprints),
"not on a non-empty allow list", "no SNI", "TLS 1.2 at most"."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from tlsstorm.common import fingerprints
from tlsstorm.receiver.clienthello import ClientHello, HelloError, HelloReader
from tlsstorm.receiver.session import RawTransportProtocol, SessionRecord

_ALERT_ACCESS_DENIED, _ALERT_DECODE_ERROR = 49, 50
_KEPT_FINGERPRINTS = 1000  # beyond, new fingerprints count as "other"


class GateRejected(ConnectionAbortedError):
    """The gate ended the handshake (rule: why)."""

    def __init__(self, rule: str) -> None:
        super().__init__(f"ClientHello gate: {rule}")
        self.rule = rule


@dataclass(frozen=True)
class GatePolicy:
    mode: str = "off"
    deny: frozenset[str] = frozenset()
    allow: frozenset[str] = frozenset()
    require_sni: bool = False
    deny_below_tls13: bool = False

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def decide(self, hello: ClientHello, ja4: str) -> tuple[bool, str]:
        """(allowed, the rule that decided)."""
        if ja4 in self.allow:
            return True, "allowlisted"
        if ja4 in self.deny:
            return False, "denylisted"
        if self.allow:
            return False, "not_allowlisted"
        if self.require_sni and hello.server_name is None:
            return False, "no_sni"
        if self.deny_below_tls13 and hello.highest_version < 0x0304:
            return False, "tls12_only"
        return True, "default"


class GateCounts:
    """Decisions by rule, and sessions, refusals and CPU per fingerprint, bounded."""

    def __init__(self) -> None:
        self.decisions: collections.Counter[tuple[str, str]] = collections.Counter()
        self.fingerprints: fingerprints.FingerprintCounts = {}

    def add(self, record: SessionRecord) -> None:
        if record.gate_decision is None:
            return
        self.decisions[record.gate_decision, record.gate_rule or ""] += 1
        key = record.ja4 or "unreadable"
        if key not in self.fingerprints and len(self.fingerprints) >= _KEPT_FINGERPRINTS:
            key = "other"
        fingerprints.count(self.fingerprints, key, record.cpu_ns // 1000,
                           record.gate_decision == "denied")

    def snapshot(self, mode: str, top: int = 20) -> dict[str, object]:
        return {
            "mode": mode,
            "decisions": [{"decision": decision, "rule": rule, "sessions": count}
                          for (decision, rule), count in sorted(self.decisions.items())],
            "fingerprints": fingerprints.top(self.fingerprints, limit=top),
        }


class GatedTransportProtocol(RawTransportProtocol):
    """Holds the first bytes after STARTTLS until the ClientHello is whole, then decides."""

    def __init__(self, tls_protocol, on_lost, policy: GatePolicy, record: SessionRecord,
                 transport: asyncio.Transport) -> None:
        super().__init__(tls_protocol, on_lost)
        self._policy = policy
        self._record = record
        self._transport = transport  # the socket's, under the TLS layer
        self._refusal: GateRejected | None = None
        self._reader: HelloReader | None = HelloReader()
        self._scratch = memoryview(bytearray(4096))

    def get_buffer(self, sizehint: int):
        if self._reader is None:
            return super().get_buffer(sizehint)
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        reader = self._reader
        if reader is None:
            super().buffer_updated(nbytes)
            return
        try:
            hello = reader.feed(self._scratch[:nbytes])
        except HelloError as error:
            # Learning, OpenSSL answers the bytes with an alert of its own.
            self._decide(False, f"hello_{error.kind}", _ALERT_DECODE_ERROR)
            return
        if hello is None:
            return
        self._record.ja4 = ja4 = hello.ja4()
        self._decide(*self._policy.decide(hello, ja4), _ALERT_ACCESS_DENIED)

    def _decide(self, allowed: bool, rule: str, alert: int) -> None:
        """Let the hello in, refuse it (enforcing), or count what would be refused."""
        record = self._record
        record.gate_rule = rule
        if allowed:
            record.gate_decision = "allowed"
        elif self._policy.mode == "enforce":
            record.gate_decision = "denied"
            self._refuse(rule, alert)
            return
        else:
            record.gate_decision = "would_deny"
        self._hand_on()

    def _hand_on(self) -> None:
        """Give OpenSSL every byte received so far, then step aside."""
        data = memoryview(self._reader.raw)
        self._reader = None
        while data:
            buffer = self._tls.get_buffer(len(data))
            count = min(len(buffer), len(data))
            buffer[:count] = data[:count]
            self._tls.buffer_updated(count)
            data = data[count:]

    def connection_lost(self, exc: Exception | None) -> None:
        # asyncio's TLS layer ends its handshake with what ended the connection: the refusal.
        super().connection_lost(exc or self._refusal)

    def _refuse(self, rule: str, alert: int) -> None:
        """A fatal alert in a plaintext record (no keys exist yet), then close."""
        self._reader = None
        self._refusal = GateRejected(rule)
        if not self._transport.is_closing():
            self._transport.write(bytes((0x15, 0x03, 0x03, 0x00, 0x02, 0x02, alert)))
            self._transport.close()
