"""Prometheus exposition: a per-service registry read at scrape time, never on the hot path."""

from __future__ import annotations

from fastapi import Response
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector


def registry_with(*collectors: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


class SpanCountsCollector:
    """tlsstorm_spans_total{outcome=ended|exported|dropped}: lost telemetry shows here."""

    def __init__(self, provider) -> None:
        self._counts = getattr(provider, "span_counts", None)

    def collect(self):
        if self._counts is None:
            return
        spans = CounterMetricFamily("tlsstorm_spans", "spans by outcome", labels=["outcome"])
        for outcome in ("ended", "exported", "dropped"):
            spans.add_metric([outcome], getattr(self._counts, outcome))
        yield spans


def metrics_response(registry: CollectorRegistry) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
