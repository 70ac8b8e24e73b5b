"""The receiver's control and stats API (FastAPI), served in the SMTP server's own loop."""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import PlainTextResponse
from opentelemetry.sdk.trace import TracerProvider

from tlsstorm.common.api import service_app
from tlsstorm.common.auth import bearer_guard
from tlsstorm.common.config import ReceiverSettings
from tlsstorm.common.cpu_limit import CpuMonitor
from tlsstorm.common.metrics import (
    CpuLimitCollector,
    SpanCountsCollector,
    metrics_response,
    registry_with,
)
from tlsstorm.common.pki import ServerCertificate
from tlsstorm.common.process import ProcessSampler
from tlsstorm.common.serve import BodyLimit
from tlsstorm.receiver.gate import GateCounts, GatePolicy
from tlsstorm.receiver.limits import SessionLimits
from tlsstorm.receiver.memory import MemoryMonitor
from tlsstorm.receiver.metrics import GateCollector, ReceiverCollector
from tlsstorm.receiver.stats import ReceiverStats


class Receiving(Protocol):
    """What the API reads from the running receiver (so this module need not import it)."""

    settings: ReceiverSettings
    provider: TracerProvider | None
    stats: ReceiverStats
    sampler: ProcessSampler
    cpu: CpuMonitor
    certificate: ServerCertificate
    key_type: str
    limits: SessionLimits
    gate: GatePolicy
    gate_counts: GateCounts
    memory: MemoryMonitor
    smtp_port: int

    @property
    def accepting(self) -> bool: ...
    def reset_stats(self) -> None: ...


WaveId = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


def create_api(service: Receiving) -> FastAPI:
    app = service_app("tlsstorm receiver")
    app.add_middleware(BodyLimit, max_bytes=64 * 1024)
    guarded = [Depends(bearer_guard(service.settings.api_token))]
    # Endpoints that read or reset what the sessions update are coroutines: they run on the
    # event loop that owns that state. As plain functions FastAPI ran them in worker threads,
    # where the memory fit met "deque mutated during iteration" (a 500 from /v1/stats in CI).
    registry = registry_with(ReceiverCollector(service.stats, service.memory.snapshot),
                             SpanCountsCollector(service.provider),
                             CpuLimitCollector(service.cpu), GateCollector(service))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        if not service.accepting:
            raise HTTPException(503, detail="SMTP listener is not accepting connections")
        return {"status": "ready", "smtp_port": service.smtp_port}

    @app.get("/v1/stats")
    async def stats(wave: WaveId = None) -> dict:
        """Per mode (plain, tls): sessions, messages, handshakes, latency, wire bytes, errors."""
        snapshot = service.stats.snapshot(wave)
        if snapshot is None:
            raise HTTPException(404, detail=f"no session of wave {wave!r} has ended here")
        snapshot["load"] = {"open_sessions": service.limits.open_sessions,
                            "handshakes_in_progress": service.limits.handshakes}
        snapshot["memory"] = service.memory.snapshot()
        snapshot["cpu"] = service.cpu.snapshot()
        snapshot["gate"] = service.gate_counts.snapshot(service.gate.mode)
        return snapshot

    @app.get("/v1/stats/samples")
    async def samples() -> dict:
        """Process CPU and RSS sampled once a second (the last 15 minutes)."""
        return {
            "samples": [
                {"unix_s": s.unix_s, "cpu_seconds": s.cpu_seconds, "rss_bytes": s.rss_bytes}
                for s in service.sampler.samples
            ]
        }

    @app.post("/v1/stats/reset", dependencies=guarded)
    async def reset() -> dict:
        service.reset_stats()
        return {"reset": True}

    @app.get("/v1/tls")
    def tls() -> dict:
        """The TLS settings in force, so a report can say what was measured."""
        settings = service.settings
        chain = service.certificate.describe()
        return {
            "cert_key_type": service.key_type,
            "tls_min_version": settings.tls_min_version,
            "tls_max_version": settings.tls_max_version,
            "session_tickets": settings.session_tickets,
            "require_starttls": settings.require_starttls,
            "cert_source": service.certificate.source,
            "cert_der_bytes": chain[0]["der_bytes"],
            "chain": chain,
            "chain_der_bytes": sum(int(entry["der_bytes"]) for entry in chain),
            "chain_summary": service.certificate.summary(),
        }

    @app.get("/v1/tls/root.pem", response_class=PlainTextResponse)
    def root() -> PlainTextResponse:
        """The root to verify the served chain against (the certificate itself when
        self-signed), e.g. for the sender's --ca-file."""
        if service.certificate.root_pem is None:
            raise HTTPException(404, detail="the receiver serves the user's certificate files; "
                                "their root is not known here")
        return PlainTextResponse(service.certificate.root_pem,
                                 media_type="application/x-pem-file")

    @app.get("/metrics")
    async def metrics():
        return metrics_response(registry)

    return app
