"""The receiver's Prometheus series, computed from its stats when scraped."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from tlsstorm.receiver.stats import ReceiverStats


class ReceiverCollector:
    def __init__(self, stats: ReceiverStats, memory: Callable[[], dict]) -> None:
        self._stats = stats
        self._memory = memory

    def collect(self):
        modes = self._stats.total.modes
        sessions = CounterMetricFamily(
            "tlsstorm_receiver_sessions", "SMTP sessions ended", labels=["mode"])
        messages = CounterMetricFamily(
            "tlsstorm_receiver_messages", "messages accepted", labels=["mode"])
        wire = CounterMetricFamily(
            "tlsstorm_receiver_wire_bytes", "TCP payload bytes", labels=["mode", "direction"])
        cpu = CounterMetricFamily(
            "tlsstorm_receiver_session_cpu_seconds", "CPU charged to sessions (compare with "
            "process_cpu_seconds_total)", labels=["mode"])
        handshake_cpu = CounterMetricFamily(
            "tlsstorm_receiver_handshake_cpu_seconds", "CPU spent in TLS handshakes (part of "
            "the tls sessions' CPU)")
        uncharged = CounterMetricFamily(
            "tlsstorm_receiver_uncharged_cpu_seconds", "event-loop CPU charged to no session",
            labels=["kind"])
        handshakes = CounterMetricFamily(
            "tlsstorm_receiver_handshakes", "TLS handshakes", labels=["result"])
        errors = CounterMetricFamily(
            "tlsstorm_receiver_errors", "session errors", labels=["mode", "kind"])
        latency = SummaryMetricFamily(
            "tlsstorm_receiver_handshake_seconds", "server-side TLS handshake time")
        for mode, stats in modes.items():
            sessions.add_metric([mode], stats.sessions)
            messages.add_metric([mode], stats.messages)
            wire.add_metric([mode, "in"], stats.wire_bytes_in)
            wire.add_metric([mode, "out"], stats.wire_bytes_out)
            cpu.add_metric([mode], stats.cpu_ns / 1e9)
            for kind, count in stats.errors.items():
                errors.add_metric([mode, kind], count)
        tls = modes["tls"]
        handshake_cpu.add_metric([], tls.handshake_cpu_ns / 1e9)
        meter = self._stats.meter
        if meter is not None:
            for kind, seconds in meter.snapshot().items():
                if kind != "accept_seconds":  # shared out to the sessions it accepted
                    uncharged.add_metric([kind.removesuffix("_seconds")], seconds)
        handshakes.add_metric(["ok"], tls.handshakes_ok)
        handshakes.add_metric(["failed"], tls.handshakes_failed)
        handshakes.add_metric(["resumed"], tls.handshakes_resumed)
        latency.add_metric([], tls.handshake_ms.count, tls.handshake_ms.sum_ms / 1000)
        p95 = tls.handshake_ms.percentile(0.95)
        latency_p95 = GaugeMetricFamily(
            "tlsstorm_receiver_handshake_p95_seconds", "95th percentile handshake time")
        latency_p95.add_metric([], (p95 or 0.0) / 1000)
        yield from (sessions, messages, wire, cpu, handshake_cpu, uncharged, handshakes, errors,
                    latency, latency_p95, *self._memory_families())

    def _memory_families(self):
        memory = self._memory()
        open_sessions = GaugeMetricFamily(
            "tlsstorm_receiver_open_sessions", "sessions open now", labels=["mode"])
        per_session = GaugeMetricFamily(
            "tlsstorm_receiver_memory_per_session_bytes",
            "RSS per concurrent session, fitted since the last reset", labels=["mode"])
        for mode in ("plain", "tls"):
            open_sessions.add_metric([mode], memory["open_sessions"][mode])
            if memory["bytes_per_session"][mode] is not None:
                per_session.add_metric([mode], memory["bytes_per_session"][mode])
        peak = GaugeMetricFamily("tlsstorm_receiver_peak_rss_bytes",
                                 "highest RSS since the last reset")
        peak.add_metric([], memory["peak_rss_bytes"] or 0)
        families = [open_sessions, per_session, peak]
        budget = memory["budget"]
        if budget is not None:
            limit = GaugeMetricFamily("tlsstorm_receiver_memory_budget_bytes",
                                      "memory sessions may fill (limit x fraction)")
            limit.add_metric([], budget["budget_bytes"])
            families.append(limit)
        return families


class GateCollector:
    """tlsstorm_gate_sessions_total{decision,rule}: what the ClientHello gate decided."""

    def __init__(self, service) -> None:
        self._service = service

    def collect(self):
        decisions = CounterMetricFamily("tlsstorm_gate_sessions", "STARTTLS sessions by the "
                                        "ClientHello gate's decision", labels=["decision", "rule"])
        for (decision, rule), count in self._service.gate_counts.decisions.items():
            decisions.add_metric([decision, rule], count)
        yield decisions
