"""Prometheus exposition: a per-service registry read at scrape time, never on the hot path."""

from __future__ import annotations

import gc

from fastapi import Response
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector


def registry_with(*collectors: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(FrozenObjectsCollector())
    for collector in collectors:
        registry.register(collector)
    return registry


class FrozenObjectsCollector:
    """tlsstorm_gc_frozen_objects: what the collector no longer walks (common/heap.py)."""

    def collect(self):
        yield GaugeMetricFamily("tlsstorm_gc_frozen_objects", "objects frozen at start, out "
                                "of the garbage collector's reach", value=gc.get_freeze_count())


class SpanCountsCollector:
    """tlsstorm_spans_total{outcome=ended|exported|dropped}: lost telemetry shows here; and
    tlsstorm_telemetry_cpu_seconds_total{part=building|exporting}: what it cost, apart from
    the work its spans describe."""

    def __init__(self, provider) -> None:
        self._counts = getattr(provider, "span_counts", None)

    def collect(self):
        if self._counts is None:
            return
        spans = CounterMetricFamily("tlsstorm_spans", "spans by outcome", labels=["outcome"])
        for outcome in ("ended", "exported", "dropped"):
            spans.add_metric([outcome], getattr(self._counts, outcome))
        cpu = CounterMetricFamily("tlsstorm_telemetry_cpu_seconds", "CPU spent on telemetry "
                                  "(in no session's figure)", labels=["part"])
        for part, seconds in self._counts.cpu_seconds().items():
            cpu.add_metric([part.removesuffix("_seconds")], seconds)
        yield from (spans, cpu)


class CpuLimitCollector:
    """The CPU limit this service runs under, its cgroup's use and throttling (issue 12)."""

    def __init__(self, monitor) -> None:
        self._monitor = monitor

    def collect(self):
        limit = self._monitor.limit
        reading = limit.reading()
        cores = GaugeMetricFamily("tlsstorm_cpu_limit_cores", "cores this service may use",
                                  labels=["source"])
        cores.add_metric([limit.source], limit.cores)
        yield cores
        if reading.cgroup_cpu_s is not None:
            yield CounterMetricFamily("tlsstorm_cpu_cgroup_seconds", "CPU used by the cgroup",
                                      value=reading.cgroup_cpu_s)
        yield CounterMetricFamily("tlsstorm_cpu_throttled_periods", "periods the kernel "
                                  "throttled the cgroup in", value=reading.throttled_periods)
        yield CounterMetricFamily("tlsstorm_cpu_throttled_seconds", "time throttled",
                                  value=reading.throttled_s)
        recent = self._monitor.recent(reading)
        if recent is not None:
            share = GaugeMetricFamily("tlsstorm_cpu_share_of_limit", "share of the limit used "
                                      "since the previous look (at least a second before)")
            share.add_metric([], float(recent["share_of_limit"] or 0.0))
            yield share


def metrics_response(registry: CollectorRegistry) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
