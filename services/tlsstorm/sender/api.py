"""The sender's control API: single sends and waves, only ever at allowed targets."""

from __future__ import annotations

from typing import Literal, Protocol

import httpx
from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.responses import JSONResponse
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, Field, NonNegativeInt, model_validator

from tlsstorm.common.api import service_app
from tlsstorm.common.auth import bearer_guard
from tlsstorm.common.config import SenderSettings
from tlsstorm.common.cpu_limit import CpuMonitor
from tlsstorm.common.metrics import (
    CpuLimitCollector,
    SpanCountsCollector,
    metrics_response,
    registry_with,
)
from tlsstorm.common.serve import BodyLimit
from tlsstorm.sender.allowlist import Allowlist, Target, TargetRefused
from tlsstorm.sender.client import SmtpClient
from tlsstorm.sender.spread import (
    HANDED,
    other_replicas,
    part_offset,
    start_shares,
    stop_parts,
    wave_held_elsewhere,
    whole_wave,
)
from tlsstorm.sender.waves import DeliveryOptions, ProfileName, Wave, WaveBook, WaveSpec


class Sending(Protocol):
    """What the API reads from the running sender (so this module need not import it)."""

    settings: SenderSettings
    provider: TracerProvider | None
    cpu: CpuMonitor
    instance: str
    allowlist: Allowlist
    peers_http: httpx.AsyncClient | None
    client: SmtpClient
    waves: WaveBook
    http_port: int
    stopping: bool


class _Labelled(DeliveryOptions):
    wave: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                             description="label that groups these messages in stats and spans")


class SendRequest(_Labelled):
    tls: bool = Field(description="use STARTTLS (else a truly plain session)")
    count: int = Field(1, ge=1, le=10_000)


class BatchRequest(_Labelled):
    """A bot's next connections in one request (Locust's users send these): the HTTP cost of
    a request is shared by its messages instead of paid by each (issue 12)."""

    tls: list[bool] = Field(min_length=1, max_length=1000,
                            description="one entry per connection, in order: STARTTLS or not")
    count: int | None = Field(None, ge=1, le=100_000, description="messages in all (default: "
                              "per_connection on every connection; fewer on the last)")
    profiles: list[ProfileName] | None = Field(
        None, max_length=1000, description="each connection's TLS personality (instead of "
        "profile), as many as tls")

    @model_validator(mode="after")
    def _count_fits_connections(self) -> BatchRequest:
        if self.profiles is not None and len(self.profiles) != len(self.tls):
            raise ValueError(f"profiles: {len(self.profiles)} given for {len(self.tls)} "
                             "connections")
        most = len(self.tls) * self.per_connection
        if self.count is not None and not most - self.per_connection < self.count <= most:
            raise ValueError(f"count {self.count} does not fit {len(self.tls)} connections of "
                             f"{self.per_connection} messages (more than "
                             f"{most - self.per_connection}, at most {most})")
        return self


class _Histogram(BaseModel):
    counts: dict[int, NonNegativeInt] = Field(max_length=4096)
    count: NonNegativeInt
    sum_ms: float = Field(ge=0)
    max_ms: float = Field(ge=0)


class _Histograms(BaseModel):
    handshake_ms: _Histogram
    total_ms: _Histogram


class _ModeFigures(BaseModel):
    model_config = {"extra": "allow"}  # the summaries, recomputed from the histograms

    ok: NonNegativeInt
    failed: NonNegativeInt
    bytes_sent: NonNegativeInt
    bytes_received: NonNegativeInt
    histograms: _Histograms


class _PartFigures(BaseModel):
    """What the whole wave sums and lists of a part (Wave.as_dict with histograms)."""

    model_config = {"extra": "allow"}

    status: Literal["running", "completed", "stopped", "failed"]
    spec: WaveSpec
    total: NonNegativeInt
    scheduled: NonNegativeInt
    done: NonNegativeInt
    late: NonNegativeInt
    skipped: NonNegativeInt
    in_flight: NonNegativeInt
    started_unix_s: float
    ended_unix_s: float | None
    plain: _ModeFigures
    tls: _ModeFigures
    errors: dict[str, NonNegativeInt] = Field(max_length=1000)
    starttls_by_profile: dict[str, NonNegativeInt] = Field(max_length=100)
    limited_by: list[str] = Field([], max_length=10)
    limit: str | None = None
    engine: str | None = None
    sender_telemetry_seconds: float = Field(0.0, ge=0)


class HandedPart(BaseModel):
    """A stopping replica's part of a wave, handed to the others (spread.hand_over)."""

    model_config = {"extra": "forbid"}

    replica: str = Field(max_length=300, description="the replica that sent the part")
    stride: int = Field(ge=2, le=64, description="the wave's shares")
    part: _PartFigures


def _results(target: Target, results: list) -> JSONResponse:
    """Straight to JSON: FastAPI's encoder walking every result cost more than sending it."""
    return JSONResponse({"target": target.label,
                         "results": [result.as_dict() for result in results]})


class _SenderCollector:
    def __init__(self, service: Sending) -> None:
        self._service = service

    def collect(self):
        totals = self._service.client.totals
        messages = CounterMetricFamily(
            "tlsstorm_sender_messages", "messages sent", labels=["mode", "result"])
        for (mode, result), count in totals.messages.items():
            messages.add_metric([mode, result], count)
        wire = CounterMetricFamily(
            "tlsstorm_sender_wire_bytes", "TCP payload bytes", labels=["mode", "direction"])
        for (mode, direction), count in totals.wire_bytes.items():
            wire.add_metric([mode, direction], count)
        running = GaugeMetricFamily("tlsstorm_sender_waves_running", "waves in progress")
        running.add_metric([], sum(
            1 for wave in self._service.waves.waves.values() if wave.status == "running"))
        yield from (messages, wire, running)


def create_api(service: Sending) -> FastAPI:
    app = service_app("tlsstorm sender")
    app.add_middleware(BodyLimit, max_bytes=64 * 1024)
    guarded = [Depends(bearer_guard(service.settings.api_token))]
    # Every endpoint that reads or changes the waves and totals is a coroutine, on the event
    # loop that updates them (FastAPI runs plain functions in worker threads).

    def taking_load() -> None:
        """Load refused once the sender is stopping: a client or a Service sends it elsewhere."""
        if service.stopping:
            raise HTTPException(503, detail="the sender is shutting down: send to another "
                                "replica", headers={"Retry-After": "1"})

    loads = [*guarded, Depends(taking_load)]
    registry = registry_with(_SenderCollector(service), SpanCountsCollector(service.provider),
                             CpuLimitCollector(service.cpu))

    async def replicas(wave: Wave | None = None) -> list[str]:
        """The other sender replicas that answer (none without TLSSTORM_SENDER_PEERS); for a
        wave, the ones found when it was first asked about."""
        if service.peers_http is None:
            return []
        if wave is not None and wave.peers is not None:
            return wave.peers
        found = await other_replicas(service.peers_http, service.settings.peers,
                                     service.http_port, service.instance)
        if wave is not None:
            wave.peers = found
        return found

    async def allowed(target: str | None) -> Target:
        try:
            return await service.allowlist.check(target or service.settings.target)
        except TargetRefused as refusal:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(refusal)) from None

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        if service.stopping:
            raise HTTPException(503, detail="the sender is shutting down")
        return {"status": "ready"}

    @app.get("/v1/stats")
    async def stats() -> dict:
        """Messages sent and the CPU spent against this sender's limit: a starved generator
        shows here before it shows as the receiver's latency."""
        totals = service.client.totals
        return {
            "messages": {f"{mode}_{result}": count
                         for (mode, result), count in totals.messages.items()},
            "waves_running": sum(1 for wave in service.waves.waves.values()
                                 if wave.status == "running"),
            "cpu": service.cpu.snapshot(),
            "engine": service.client.engine_choice.as_dict(),
            # In the process's CPU, but no message's: building and exporting spans.
            "telemetry": service.client.telemetry.cpu_seconds(),
            "instance": service.instance,
        }

    async def one_after_another(request: _Labelled, connections: list[tuple[bool, str]],
                                count: int) -> JSONResponse:
        """`count` messages over these (STARTTLS or not, personality) connections, each
        carrying per_connection of them (the last what is left); one result per message."""
        target = await allowed(request.target)
        batches = []
        for tls, profile in connections:
            batches.append((tls, profile, min(request.per_connection, count)))
            count -= batches[-1][2]
        results = await service.client.send_in_order(target, batches, request.size,
                                                     wave_id=request.wave, resume=request.resume)
        return _results(target, results)

    @app.post("/v1/send", dependencies=loads)
    async def send(request: SendRequest) -> JSONResponse:
        """Send now and wait; one result per message."""
        connections = -(-request.count // request.per_connection)
        return await one_after_another(request, [(request.tls, request.profile)] * connections,
                                       request.count)

    @app.post("/v1/batch", dependencies=loads)
    async def send_batch(request: BatchRequest) -> JSONResponse:
        """Connections one after another, as one bot works down its list; one result per
        message, in order."""
        profiles = request.profiles or [request.profile] * len(request.tls)
        return await one_after_another(request, list(zip(request.tls, profiles, strict=True)),
                                       request.count or len(request.tls) * request.per_connection)

    @app.post("/v1/waves", status_code=status.HTTP_202_ACCEPTED, dependencies=loads)
    async def start_wave(spec: WaveSpec) -> dict:
        """Start a wave in the background; poll /v1/waves/{id}."""
        if spec.concurrency > service.settings.max_concurrency:
            raise HTTPException(
                422, detail=f"concurrency {spec.concurrency} is above the sender's cap "
                f"{service.settings.max_concurrency} (TLSSTORM_SENDER_MAX_CONCURRENCY)")
        target = await allowed(spec.target)
        if spec.share is not None and spec.share.id in service.waves.waves:
            raise HTTPException(409, detail=f"wave {spec.share.id} is already here")
        remotes = await replicas() if spec.share is None else []
        wave = Wave(spec, target, service.client, service.cpu.limit, stride=len(remotes) + 1)
        wave.peers = remotes if remotes else None
        service.waves.add(wave)
        wave.start()
        if remotes:
            for refusal in await start_shares(service.peers_http, wave, remotes):
                wave.errors[f"share refused: {refusal}"] += 1
        return {"id": wave.id, "status": wave.status, "url": f"/v1/waves/{wave.id}",
                "replicas": wave.stride}

    @app.get("/v1/waves")
    async def list_waves() -> dict:
        return {"waves": [wave.as_dict() for wave in service.waves.waves.values()]}

    def find(wave_id: str) -> Wave:
        wave = service.waves.waves.get(wave_id)
        if wave is None:
            raise HTTPException(404, detail=f"no wave {wave_id!r}: see GET /v1/waves")
        return wave

    @app.get("/v1/waves/{wave_id}")
    async def get_wave(wave_id: str, part: bool = False, forwarded: bool = False) -> dict:
        """The whole wave, whichever replica holds which part; `part`: this replica's part
        alone, with its latency histograms (what replicas ask each other). A replica that
        sends no part of it answers from the parts handed to it by replicas that stopped, or
        else asks the others (`forwarded`: asked so by another, it does not ask further)."""
        asks = not forwarded and service.peers_http is not None
        if wave_id not in service.waves.waves and not part:
            if (adopted := service.waves.adopted.get(wave_id)) is not None:
                return await whole_wave(service.peers_http, adopted,
                                        await replicas() if asks else [])
            if asks and (held := await wave_held_elsewhere(
                    service.peers_http, wave_id, await replicas())) is not None:
                return held
        wave = find(wave_id)
        if part or wave.stride == 1 or service.peers_http is None:
            return wave.as_dict(histograms=part)
        return await whole_wave(service.peers_http, wave.others, await replicas(wave),
                                wave.as_dict(histograms=True))

    @app.put("/v1/waves/{wave_id}/parts/{offset}", dependencies=guarded)
    async def take_part(wave_id: str, offset: int, handed: HandedPart) -> dict:
        """A replica stopping hands in a part's final figures (its own, or one it knew):
        whichever replica answers for the wave afterwards counts them, this one included
        when it sends no part of the wave (see spread.hand_over)."""
        part = handed.part.model_dump(mode="json")
        share = handed.part.spec.share
        wave = service.waves.waves.get(wave_id)
        kept = wave.others if wave is not None else service.waves.adopted.get(wave_id)
        stride = kept.stride if kept is not None else handed.stride
        if wave is not None and offset == wave.offset:
            raise HTTPException(409, detail=f"this replica sends part {offset} of wave "
                                f"{wave_id} itself")
        if (part_offset(part) != offset or offset >= stride or handed.stride != stride
                or (share is not None and (share.id, share.stride) != (wave_id, stride))):
            raise HTTPException(422, detail=f"part {offset} of wave {wave_id} (shares of "
                                f"{stride}) is not what this body describes")
        if kept is None:
            kept = service.waves.adopt(wave_id, stride, handed.part.spec.total_messages)
        kept.keep(offset, handed.replica + HANDED, part)
        return {"id": wave_id, "offset": offset}

    @app.delete("/v1/waves/{wave_id}", dependencies=guarded)
    async def stop_wave(wave_id: str, part: bool = False) -> dict:
        """Stop the wave on every replica (`part`: on this one only)."""
        wave = find(wave_id)
        wave.stop()
        if not part and wave.stride > 1 and service.peers_http is not None:
            await stop_parts(service.peers_http, wave.id, await replicas(wave))
        await wave.wait()
        return await get_wave(wave_id, part)

    @app.get("/metrics")
    async def metrics():
        return metrics_response(registry)

    return app
