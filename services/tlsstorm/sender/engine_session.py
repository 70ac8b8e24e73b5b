"""One connection held by the compiled engine, measured as the Python client measures its own:
the same results, the same spans (recorded when the engine reports the connection over, with
the ids its messages' traceparent headers already named)."""

from __future__ import annotations

import ssl
from collections import defaultdict

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from tlsstorm.common import attributes as attr
from tlsstorm.sender.engine import EngineGone
from tlsstorm.sender.message import build_message
from tlsstorm.sender.session import Checkpoint, MessageResult, Phase, Session, TlsFacts
from tlsstorm.sender.smtp_wire import dot_stuffed

_VERSIONS = {0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}


def _openssl_cipher_names() -> dict[int, str]:
    """OpenSSL's names by IANA number, so both ends (the receiver is OpenSSL) say the same."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:@SECLEVEL=0")
    return {cipher["id"] & 0xFFFF: cipher["name"] for cipher in context.get_ciphers()}


_CIPHER_NAMES = _openssl_cipher_names()


class EngineSession(Session):
    def __init__(self, client, target, tls: bool, wave_id: str | None, engine_profile: dict,
                 sni: bool) -> None:
        super().__init__(client, target, tls, wave_id, None, sni)
        self.engine_profile = engine_profile
        self.facts: TlsFacts | None = None
        self.refused = False

    def tls_facts(self) -> TlsFacts | None:
        return self.facts

    def tls_refused(self) -> bool:
        return self.refused

    async def run(self, count: int, size: int) -> list[MessageResult]:
        self.count, self.size = count, size
        client, settings, target = self.client, self.settings, self.target
        ids = [client.ids.choose() for _ in range(count)] if client.tracer else []
        parent = trace.get_current_span().get_span_context()
        flags = int(parent.trace_flags) if parent.is_valid else 1
        bodies, sizes = [], []
        for trace_id, span_id in ids or [(None, None)] * count:
            traceparent = (f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
                           if trace_id is not None else None)
            message = build_message(size, settings.mail_from, settings.rcpt_to, traceparent,
                                    self.wave_id)
            sizes.append(len(message))
            bodies.append(dot_stuffed(message).decode("ascii"))
        job = {"address": target.address, "port": target.port,
               "server_name": target.host if self.sni else "", "tls": self.tls,
               "bodies": bodies, "sizes": sizes, "ehlo": settings.helo_name,
               "mail_from": settings.mail_from, "rcpt_to": settings.rcpt_to,
               "timeout_s": settings.timeout_s, "phases": self.trace_commands,
               "quick_ack": settings.quick_ack, "profile": self.engine_profile}
        try:
            outcome = await client.engine.run(job)
        except EngineGone as gone:
            self._not_sent(f"EngineGone: {gone}")
            return self.results
        self._replay(outcome, ids, sizes)
        return self.results

    def _replay(self, outcome: dict, ids: list[tuple[int, int]], sizes: list[int]) -> None:
        """The engine's marks as this session's checkpoints, message by message."""
        handshake = outcome["tls"]
        if handshake is not None:
            self.facts = TlsFacts(
                _VERSIONS.get(handshake["version"], f"0x{handshake['version']:04x}"),
                _CIPHER_NAMES.get(handshake["cipher_id"], f"0x{handshake['cipher_id']:04X}"),
                handshake["resumed"], handshake["started_ns"], handshake["ms"])
        self.refused = outcome["tls_refused"]
        self.connect_ms = outcome["connect_ms"]
        phases: defaultdict[int, list[Phase]] = defaultdict(list)
        for phase in outcome.get("phases") or ():
            phases[phase["message"]].append(Phase(phase["name"], phase["start"], phase["end"]))
        start, final = outcome["start"], outcome["final"]
        self.mark = Checkpoint(start["ns"], start["ns"], 0, 0, phases[0])
        accepted = outcome["accepted"] or []
        for index, message in enumerate(accepted):
            at = final if index == self.count - 1 and final else message["at"]
            result = MessageResult(ok=True, tls=self.tls, code=message["code"],
                                   reply=message["reply"], size=sizes[index])
            self._close_message(result, self._recorded_span(ids, index),
                                _checkpoint(at, phases[index + 1]))
        failure = outcome["failure"]
        if failure is not None and len(accepted) < self.count:
            result = MessageResult(ok=False, tls=self.tls, code=failure.get("code"),
                                   reply=failure.get("message"), size=self.size,
                                   error=failure["text"])
            self._close_message(result, self._recorded_span(ids, len(accepted)),
                                _checkpoint(final, []))
        self._not_sent(failure["text"] if failure else "the connection ended")

    def _recorded_span(self, ids: list[tuple[int, int]], index: int) -> trace.Span | None:
        """The message's span, from the last checkpoint, with the ids its header carried."""
        if not ids:
            return None
        with self.client.ids.preset(*ids[index]):
            return self.client.tracer.start_span(attr.SPAN_SEND, kind=SpanKind.CLIENT,
                                                 start_time=self.mark.wall_ns)


def _checkpoint(mark: dict, phases: list[Phase]) -> Checkpoint:
    return Checkpoint(mark["ns"], mark["ns"], mark["received"], mark["sent"], phases)
