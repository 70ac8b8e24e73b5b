"""The meter's API: the watched server's CPU and memory now (for a sweep's exact before and
after), Prometheus metrics, and readiness that says when nothing is being measured."""

from __future__ import annotations

from typing import Protocol

from fastapi import Depends, FastAPI, HTTPException
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tlsstorm.common.api import service_app
from tlsstorm.common.auth import bearer_guard
from tlsstorm.common.metrics import metrics_response, registry_with


class Metered(Protocol):
    """What the API reads of the meter service."""

    @property
    def problem(self) -> str | None: ...
    def snapshot(self) -> dict: ...
    def reset_peak(self) -> None: ...


class _MeterMetrics:
    def __init__(self, meter: Metered) -> None:
        self._meter = meter

    def collect(self):
        snapshot = self._meter.snapshot()
        labels = ["target"], [snapshot["target"]]
        cpu = CounterMetricFamily("tlsstorm_target_cpu_seconds", "CPU of the watched server's "
                                  "processes (ended ones too)", labels=labels[0])
        cpu.add_metric(labels[1], snapshot["cpu_seconds_total"])
        memory = GaugeMetricFamily("tlsstorm_target_memory_bytes", "PSS of the watched "
                                   "server's live processes", labels=labels[0])
        memory.add_metric(labels[1], snapshot["memory_bytes"])
        processes = GaugeMetricFamily("tlsstorm_target_processes", "live processes watched",
                                      labels=labels[0])
        processes.add_metric(labels[1], snapshot["processes"])
        own = CounterMetricFamily("tlsstorm_meter_cpu_seconds", "the meter's own CPU",
                                  value=snapshot["meter"]["cpu_seconds_total"])
        yield from (cpu, memory, processes, own)


def create_api(meter: Metered, api_token: str | None) -> FastAPI:
    app = service_app("tlsstorm meter")
    registry = registry_with(_MeterMetrics(meter))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        if meter.problem:
            raise HTTPException(503, detail=meter.problem)
        return {"status": "ready"}

    @app.get("/v1/stats")
    def stats() -> dict:
        """The server's CPU (cumulative), memory and processes now, read when asked."""
        return meter.snapshot()

    @app.post("/v1/stats/reset", dependencies=[Depends(bearer_guard(api_token))])
    def reset() -> dict:
        """Start the memory peak again from now (a wave's own peak)."""
        meter.reset_peak()
        return {"reset": True}

    @app.get("/metrics")
    def metrics():
        return metrics_response(registry)

    return app
