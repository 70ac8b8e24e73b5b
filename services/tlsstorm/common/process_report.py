"""A tlsstorm.process span each second: a service's CPU against its limit, and what the service
adds (the receiver: CPU charged to sessions, RSS, open sessions), for the collector to reconcile
costs and to name a wave's limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from tlsstorm.common import attributes as attr
from tlsstorm.common.cpu_limit import CpuLimit


async def report_every_second(tracer: trace.Tracer, role: str, limit: CpuLimit,
                              extra: Callable[[], dict[str, int]] | None = None,
                              interval_s: float = 1.0) -> None:
    """`extra()` gives the service's own attributes for the second just ended."""
    then_ns, then = time.time_ns(), limit.reading()
    while True:
        await asyncio.sleep(interval_s)
        now_ns, now = time.time_ns(), limit.reading()
        used = limit.usage(then, now)
        attributes = {
            attr.PROCESS_ROLE: role,
            attr.PROCESS_CPU_US: int((now.process_cpu_s - then.process_cpu_s) * 1e6),
            attr.CPU_LIMIT_MILLICORES: int(limit.cores * 1000),
            attr.CPU_THROTTLED_US: int(float(used["throttled_seconds"]) * 1e6),
            attr.CPU_BUSY: int(bool(used["busy"])),
            **(extra() if extra is not None else {}),
        }
        tracer.start_span(attr.SPAN_PROCESS, kind=SpanKind.INTERNAL, start_time=then_ns,
                          attributes=attributes).end(end_time=now_ns)
        then_ns, then = now_ns, now
