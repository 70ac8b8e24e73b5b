"""The collector's HTTP face: OTLP/HTTP ingest, JSON summary, HTML report, metrics."""

from __future__ import annotations

import collections
from html import escape
from typing import Annotated, Protocol

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.requests import ClientDisconnect

from tlsstorm.collector import otlp
from tlsstorm.collector.aggregate import Aggregator
from tlsstorm.collector.costs import (
    model_for_target,
    model_from_waves,
    target_costs,
    target_sweep,
)
from tlsstorm.collector.forward import Forwarder
from tlsstorm.collector.report import (
    not_found_html,
    plan_page,
    render_html,
    render_target_html,
)
from tlsstorm.common.api import service_app
from tlsstorm.common.config import CollectorSettings
from tlsstorm.common.cpu_limit import CpuMonitor
from tlsstorm.common.metrics import CpuLimitCollector, metrics_response, registry_with
from tlsstorm.plan.model import ModelError, from_sweep
from tlsstorm.plan.project import Demand, Inputs, plan
from tlsstorm.plan.report import html_plan


class Collecting(Protocol):
    """What the API reads from the running collector (so this module need not import it)."""

    settings: CollectorSettings
    cpu: CpuMonitor
    aggregator: Aggregator
    requests: collections.Counter[int]
    loaded: bool
    forwarder: Forwarder | None

    def history(self) -> dict: ...
    async def committed(self) -> None: ...


WaveFilter = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")]


def _target_query():
    return Query(max_length=300, pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$",
                 description="a server as the sender aimed at it, host:port (GET /v1/targets "
                 "lists them)")


TargetFilter = Annotated[str | None, _target_query()]
TargetName = Annotated[str, _target_query()]
Since = Annotated[float | None, Query(ge=0, description="unix seconds, inclusive")]
Until = Annotated[float | None, Query(ge=0, description="unix seconds, inclusive")]
PerDay = Annotated[float | None, Query(gt=0, le=1e13, description="messages per day")]
PeakFactor = Annotated[float, Query(ge=1, le=1000, description="peak rate over the mean")]
PeakRate = Annotated[float | None, Query(gt=0, le=1e9, description="peak messages per second")]
Trajectory = Annotated[str, Query(max_length=200, description="TLS ratios, comma-separated")]
Size = Annotated[int | None, Query(ge=64, le=100 * 2**20, description="message bytes")]
Utilisation = Annotated[float, Query(gt=0, lt=1, description="target CPU utilisation")]
Slo = Annotated[float, Query(gt=0, le=600_000, description="session p99 objective, ms")]
# A request whose client went away before its body arrived: counted under nginx's code for it,
# no reply is sent.
CLIENT_CLOSED_REQUEST = 499


class _CollectorMetrics:
    def __init__(self, service: Collecting) -> None:
        self._service = service

    def collect(self):
        service = self._service
        aggregator = service.aggregator
        spans = CounterMetricFamily("tlsstorm_collector_spans", "spans by outcome",
                                    labels=["outcome"])
        spans.add_metric(["received"], aggregator.spans_received)
        spans.add_metric(["aggregated"], aggregator.spans_aggregated)
        spans.add_metric(["rejected"], aggregator.spans_rejected)
        requests = CounterMetricFamily("tlsstorm_collector_requests", "OTLP requests by status",
                                       labels=["status"])
        for code, count in service.requests.items():
            requests.add_metric([str(code)], count)
        batches = CounterMetricFamily("tlsstorm_collector_forward_batches",
                                      "batches forwarded or dropped", labels=["outcome"])
        forwarder = service.forwarder
        if forwarder is not None:
            batches.add_metric(["forwarded"], forwarder.forwarded)
            batches.add_metric(["dropped"], forwarder.dropped)
            batches.add_metric(["retried"], forwarder.retried)
        cells = GaugeMetricFamily("tlsstorm_collector_cells", "aggregate cells held")
        cells.add_metric([], len(aggregator.cells))
        yield from (spans, requests, batches, cells)


def create_api(service: Collecting) -> FastAPI:
    app = service_app("tlsstorm collector")
    registry = registry_with(_CollectorMetrics(service), CpuLimitCollector(service.cpu))
    limit = service.settings.max_body_bytes
    # Endpoints that read the cells are coroutines: they run on the event loop that adds and
    # drops cells. As plain functions FastAPI ran them in worker threads, where iterating the
    # live cells met "dictionary changed size during iteration" (a 500) during a wave.

    def refuse(status: int, reason: str) -> Response:
        service.requests[status] += 1
        return Response(content=reason.encode(), status_code=status, media_type="text/plain")

    @app.post("/v1/traces", summary="OTLP/HTTP trace export (protobuf or JSON, gzip or not)")
    async def ingest(request: Request) -> Response:
        try:
            encoding = otlp.encoding_of(request.headers.get("content-type"),
                                        request.headers.get("content-encoding"))
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise otlp.OtlpError(413, f"body of {declared} bytes exceeds {limit}")
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise otlp.OtlpError(413, f"body exceeds {limit} bytes")
            decoded = otlp.decode(bytes(body), encoding, limit)
        except otlp.OtlpError as error:
            return refuse(error.status, error.reason)
        except ClientDisconnect:
            return refuse(CLIENT_CLOSED_REQUEST, "client closed the request")
        rejected, reason = service.aggregator.ingest(decoded)
        if service.forwarder is not None:
            headers = {"content-type": encoding.media_type}
            if encoding.compression:
                headers["content-encoding"] = encoding.compression
            service.forwarder.offer(bytes(body), headers)
        # Acknowledged once on disk: a collector killed before then loses nothing the
        # exporter does not send again.
        await service.committed()
        service.requests[200] += 1
        return Response(otlp.encode_response(encoding, rejected, reason),
                        media_type=encoding.media_type)

    def unknown(wave: str | None) -> bool:
        """A wave filter naming a wave of which no span has arrived (404 on every route)."""
        return wave is not None and not service.aggregator.has_wave(wave)

    @app.get("/v1/summary")
    async def summary(wave: WaveFilter = None, since: Since = None, until: Until = None) -> dict:
        """Plain vs STARTTLS costs per role, with TLS/plain factors; filter by wave and time
        (`wave=` with no value: the sessions that carry no wave id)."""
        if unknown(wave):
            raise HTTPException(404, detail=f"no span of wave {wave!r} has arrived here "
                                "(GET /v1/waves lists the waves)")
        return {**service.aggregator.summary(wave, since, until), "history": service.history()}

    @app.get("/v1/waves")
    async def waves(target: TargetFilter = None) -> dict:
        """Each wave, with the server it was aimed at; `target=` only those aimed at it."""
        return {"waves": service.aggregator.waves(target)}

    @app.get("/v1/targets")
    async def targets() -> dict:
        """The servers waves were aimed at or a meter watched."""
        return {"targets": service.aggregator.targets()}

    def known_target(target: str) -> None:
        if not any(row["target"] == target for row in service.aggregator.targets()):
            raise HTTPException(404, detail=f"no wave was aimed at {target} and no meter "
                                "watched it here (GET /v1/targets lists them)")

    @app.get("/v1/targets/summary")
    async def target_summary(target: TargetName, wave: WaveFilter = None, since: Since = None,
                       until: Until = None) -> dict:
        """A server as the sender saw it, per mode, beside its CPU and memory from its meter
        over the same seconds, and its CPU per message per mode fitted over its waves."""
        known_target(target)
        return target_costs(service.aggregator, target, wave, since, until)

    @app.get("/v1/sweep")
    async def sweep(target: TargetName) -> dict:
        """The waves aimed at a metered server, as `tlsstorm sweep` saves them: `tlsstorm plan
        --sweep` on this plans exactly as /v1/plan?target= does."""
        known_target(target)
        return target_sweep(service.aggregator, target)

    @app.get("/", response_class=HTMLResponse)
    async def report(request: Request, wave: WaveFilter = None, since: Since = None,
               until: Until = None, target: TargetFilter = None) -> HTMLResponse:
        """The HTML cost report with its plots (with `target=`, a metered server's); its links
        are absolute, so a saved copy still reaches the collector."""
        base_url = str(request.base_url).rstrip("/")
        if unknown(wave):
            return HTMLResponse(not_found_html(wave, base_url), status_code=404)
        if target is not None:
            known_target(target)
            return HTMLResponse(render_target_html(
                target_costs(service.aggregator, target, wave, since, until), base_url))
        return HTMLResponse(render_html(service.aggregator, wave, since, until, base_url,
                                        service.history()))

    def planned(messages_per_day: float | None, peak_factor: float, peak_rate: float | None,
                tls_trajectory: str, size: int | None, target_utilisation: float,
                slo_p99_ms: float, target: str | None = None) -> dict:
        try:
            ratios = tuple(float(part) for part in tls_trajectory.split(",") if part.strip())
        except ValueError:
            raise HTTPException(422, detail="tls_trajectory: comma-separated ratios, e.g. "
                                "0.2,0.3,0.7") from None
        if not ratios or not all(0 <= ratio <= 1 for ratio in ratios):
            raise HTTPException(422, detail="tls_trajectory: ratios between 0 and 1")
        try:
            demand = Demand.of(messages_per_day, peak_factor, peak_rate)
            sweep = service.settings.plan_sweep
            model = model_for_target(service.aggregator, target) if target else \
                from_sweep(sweep) if sweep else model_from_waves(service.aggregator)
        except ModelError as error:
            raise HTTPException(409, detail=str(error)) from None
        except ValueError as error:
            raise HTTPException(422, detail=str(error)) from None
        return plan(model, Inputs(demand, ratios, size, target_utilisation, slo_p99_ms))

    @app.get("/v1/plan")
    async def plan_json(messages_per_day: PerDay = None, peak_factor: PeakFactor = 3.0,
                  peak_rate: PeakRate = None, tls_trajectory: Trajectory = "0.2,0.3,0.7",
                  size: Size = None, target_utilisation: Utilisation = 0.7,
                  slo_p99_ms: Slo = 500.0, target: TargetFilter = None) -> dict:
        """Cores, bandwidth and p99 for a volume at each TLS ratio, from this collector's
        stored waves: the receiver's, or with `target=` those aimed at that metered server
        (409 with the reason when they cannot make a model)."""
        return planned(messages_per_day, peak_factor, peak_rate, tls_trajectory, size,
                       target_utilisation, slo_p99_ms, target)

    @app.get("/plan", response_class=HTMLResponse)
    async def plan_html(request: Request, messages_per_day: PerDay = None,
                  peak_factor: PeakFactor = 3.0, peak_rate: PeakRate = None,
                  tls_trajectory: Trajectory = "0.2,0.3,0.7", size: Size = None,
                  target_utilisation: Utilisation = 0.7, slo_p99_ms: Slo = 500.0,
                  target: TargetFilter = None) -> HTMLResponse:
        """The planner's form and, once a volume is given, its plan with plots."""
        base_url = str(request.base_url).rstrip("/")
        form = {key: "" if value is None else f"{value:g}" if isinstance(value, float)
                else str(value) for key, value in (
                    ("messages_per_day", messages_per_day), ("peak_factor", peak_factor),
                    ("peak_rate", peak_rate), ("tls_trajectory", tls_trajectory),
                    ("size", size), ("target_utilisation", target_utilisation),
                    ("slo_p99_ms", slo_p99_ms), ("target", target))}
        if messages_per_day is None and peak_rate is None:
            body = "<p>Give a daily volume (with its peak factor) or a peak rate.</p>"
            return HTMLResponse(plan_page(form, body, base_url))
        try:
            body = html_plan(planned(messages_per_day, peak_factor, peak_rate, tls_trajectory,
                                     size, target_utilisation, slo_p99_ms, target))
        except HTTPException as error:
            body = f"<p><b>No plan:</b> {escape(str(error.detail))}</p>"
            return HTMLResponse(plan_page(form, body, base_url), status_code=error.status_code)
        return HTMLResponse(plan_page(form, body, base_url))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        if not service.loaded:
            raise HTTPException(503, detail="stored results are still loading")
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics():
        return metrics_response(registry)

    return app


