"""A tlsstorm.process span each second: a service's CPU against its limit, what its telemetry
cost in it (building and exporting spans), and what the service adds (the receiver: CPU charged
to sessions, RSS, open sessions), for the collector to reconcile costs and to name a wave's
limit. Locust's workers send the same span from their gevent loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from tlsstorm.common import attributes as attr
from tlsstorm.common.cpu_limit import CpuLimit, CpuReading
from tlsstorm.common.telemetry import SpanCounts

# Roles of the components that generate load: their spans name what limited a wave.
GENERATOR_ROLES = frozenset({"sender", "locust-worker"})


class ProcessReporter:
    """Ends one span per call: the CPU used since the previous call."""

    def __init__(self, tracer: trace.Tracer, role: str, limit: CpuLimit,
                 extra: Callable[[], dict[str, int]] | None = None,
                 telemetry: SpanCounts | None = None) -> None:
        self.tracer, self.role, self.limit, self.extra = tracer, role, limit, extra
        self.telemetry = telemetry
        self._then_ns: int = time.time_ns()
        self._then: CpuReading = limit.reading()
        self._telemetry_then_ns = self._telemetry_ns()
        self._first = True  # the first span says the process started (a restart, in a wave)

    def _telemetry_ns(self) -> int:
        return self.telemetry.cpu_ns() if self.telemetry is not None else 0

    def report(self) -> None:
        """`extra()` gives the service's own attributes for the interval just ended."""
        now_ns, now = time.time_ns(), self.limit.reading()
        used = self.limit.usage(self._then, now)
        telemetry_ns = self._telemetry_ns()
        attributes = {
            attr.PROCESS_ROLE: self.role,
            attr.PROCESS_CPU_US: int((now.process_cpu_s - self._then.process_cpu_s) * 1e6),
            attr.PROCESS_TELEMETRY_US: (telemetry_ns - self._telemetry_then_ns) // 1000,
            attr.CPU_LIMIT_MILLICORES: int(self.limit.cores * 1000),
            attr.CPU_THROTTLED_US: int(float(used["throttled_seconds"]) * 1e6),
            attr.CPU_BUSY: int(bool(used["busy"])),
            attr.PROCESS_STARTED: int(self._first),
            **(self.extra() if self.extra is not None else {}),
        }
        self._first = False
        self.tracer.start_span(attr.SPAN_PROCESS, kind=SpanKind.INTERNAL,
                               start_time=self._then_ns, attributes=attributes
                               ).end(end_time=now_ns)
        self._then_ns, self._then = now_ns, now
        self._telemetry_then_ns = telemetry_ns


async def report_every_second(tracer: trace.Tracer, role: str, limit: CpuLimit,
                              extra: Callable[[], dict[str, int]] | None = None,
                              interval_s: float = 1.0,
                              telemetry: SpanCounts | None = None) -> None:
    reporter = ProcessReporter(tracer, role, limit, extra, telemetry)
    while True:
        await asyncio.sleep(interval_s)
        reporter.report()
