"""The sender's SMTP client: what every connection reuses (TLS contexts, names, the tracer, the
compiled engine when there is one), and the running totals for /metrics."""

from __future__ import annotations

import collections

from opentelemetry.sdk.trace import TracerProvider

from tlsstorm.common.config import SenderSettings
from tlsstorm.common.telemetry import PresetIdGenerator
from tlsstorm.common.tls import client_context, resuming
from tlsstorm.sender.allowlist import Target
from tlsstorm.sender.engine import Engine, find_engine
from tlsstorm.sender.engine_session import EngineSession
from tlsstorm.sender.profiles import PROFILES, engine_profile, profile_context
from tlsstorm.sender.session import MessageResult, Session


class SendTotals:
    """Running sums for /metrics, updated once per connection."""

    def __init__(self) -> None:
        self.messages: collections.Counter[tuple[str, str]] = collections.Counter()
        self.wire_bytes: collections.Counter[tuple[str, str]] = collections.Counter()

    def add(self, tls: bool, results: list[MessageResult]) -> None:
        mode = "tls" if tls else "plain"
        for result in results:
            self.messages[mode, "ok" if result.ok else "failed"] += 1
            self.wire_bytes[mode, "out"] += result.bytes_sent
            self.wire_bytes[mode, "in"] += result.bytes_received


class SmtpClient:
    """Holds what every connection reuses: the TLS contexts, names, the tracer, the engine."""

    def __init__(self, settings: SenderSettings, provider: TracerProvider | None = None) -> None:
        self.settings = settings
        self.verify = settings.ca_file is not None
        self.resuming_context = resuming(client_context(settings.ca_file))
        self.profile_contexts = {name: profile_context(name, settings.ca_file)
                                 for name in PROFILES}
        self.tracer = provider.get_tracer("tlsstorm.sender") if provider else None
        ids = getattr(provider, "id_generator", None)
        self.ids = ids if isinstance(ids, PresetIdGenerator) else None
        self.totals = SendTotals()
        self.helo_name = settings.helo_name.encode("ascii")
        self.mail_from = settings.mail_from.encode("ascii")
        self.rcpt_to = settings.rcpt_to.encode("ascii")
        engine_path = find_engine(settings.engine)
        # Spans recorded after the fact need ids chosen in advance (PresetIdGenerator).
        usable = engine_path is not None and (self.tracer is None or self.ids is not None)
        self.engine = Engine(engine_path, settings.ca_file) if usable else None
        self.engine_profiles = {
            (name, False): engine_profile(context, PROFILES[name])
            for name, context in self.profile_contexts.items()}
        self.engine_profiles["default", True] = engine_profile(
            self.resuming_context, PROFILES["default"], resume=True)

    @property
    def engine_name(self) -> str:
        return f"compiled ({self.engine.path})" if self.engine else "python"

    def helper_pids(self) -> list[int]:
        """Processes whose CPU is the sender's: the engine's."""
        return self.engine.pids() if self.engine else []

    async def send(
        self, target: Target, tls: bool, count: int, size: int, wave_id: str | None = None,
        resume: bool = False, profile: str = "default",
    ) -> list[MessageResult]:
        """Send `count` messages over one connection; one result per message, failed or not.

        With `resume`, the TLS handshake offers the session of the previous connection to the
        same server (tickets), as a resuming client would. `profile` is the client's TLS
        personality (sender/profiles.py).
        """
        sni = PROFILES[profile].sni
        if self.engine is not None:
            session = EngineSession(self, target, tls, wave_id,
                                    self.engine_profiles[profile, resume], sni)
        else:
            context = self.resuming_context if resume else self.profile_contexts[profile]
            session = Session(self, target, tls, wave_id, context, sni)
        results = await session.run(count, size)
        self.totals.add(tls, results)
        return results

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()
