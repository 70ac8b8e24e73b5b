"""The meter process: reads the watched server's CPU and memory every interval, serves them on
its API and, with tracing configured, sends each interval to the collector as a
tlsstorm.process span of role "target", as the receiver reports its own process."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import asdict, dataclass

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from tlsstorm.common import attributes as attr
from tlsstorm.common.config import MeterSettings
from tlsstorm.common.process import cpu_seconds, rss_bytes
from tlsstorm.common.serve import HttpServer, bind, port_of
from tlsstorm.meter.api import create_api
from tlsstorm.meter.supervise import Supervised
from tlsstorm.meter.watch import Cgroup, ProcessTree, Reading

TARGET_ROLE = "target"


def watched_by(settings: MeterSettings) -> ProcessTree | Cgroup:
    if settings.cgroup or settings.cgroup_of_pid_file:
        return Cgroup(settings.cgroup, settings.cgroup_of_pid_file)
    return ProcessTree(pid=settings.pid, pid_file=settings.pid_file,
                       names=settings.process_names or None)


@dataclass(frozen=True, slots=True)
class Sample:
    unix_s: float
    reading: Reading


class MeterService:
    """With `command`, it runs the server itself (meter/supervise.py) and ends with it."""

    def __init__(self, settings: MeterSettings, provider: TracerProvider | None = None,
                 command: list[str] | None = None) -> None:
        self.settings = settings
        self.provider = provider
        self.server = Supervised(command) if command else None
        self.ended = self.server.ended if self.server else None
        self.watched = watched_by(settings)
        self.samples: collections.deque[Sample] = collections.deque(maxlen=900)
        self.peak_memory_bytes = 0
        self._tracer = provider.get_tracer("tlsstorm.meter") if provider else None
        self._http_sock = bind(settings.host, settings.http_port)
        self.http_port = port_of(self._http_sock)
        self._http = HttpServer(create_api(self, settings.api_token), self._http_sock)
        self._task: asyncio.Task | None = None
        self.latest = self.read()

    def describe(self) -> str:
        return (f"meter: {self.watched.description}, as {self.settings.target}; "
                f"API http://{self.settings.host}:{self.http_port}")

    def read(self) -> Reading:
        """A reading now (the sampler's, and the API's for an exact before and after)."""
        reading = self.watched.read()
        self.peak_memory_bytes = max(self.peak_memory_bytes, reading.memory_bytes)
        self.latest = reading
        return reading

    @property
    def problem(self) -> str | None:
        """Why the figures cover nothing, if they do not."""
        if self.latest.processes:
            return None
        return (f"no process to measure: {self.watched.description} matches none now; "
                "check the server runs and --pid-file, --pid, --process-names or --cgroup")

    async def start(self) -> None:
        if self.server is not None:
            self.server.start()
        await self._http.start()
        self._task = asyncio.create_task(self._sample_forever())

    @property
    def exit_code(self) -> int:
        """The server's exit status when the meter ran it, else 0."""
        return (self.server.returncode or 0) if self.server else 0

    async def _sample_forever(self) -> None:
        then_ns, then, own_then = time.time_ns(), self.read(), cpu_seconds()
        limit = self.watched.limit()
        limit_then = limit.reading(then.cpu_seconds) if limit else None
        while True:
            await asyncio.sleep(self.settings.interval_s)
            now_ns, now, own_now = time.time_ns(), self.read(), cpu_seconds()
            self.samples.append(Sample(now_ns / 1e9, now))
            used = None
            if limit is not None and limit_then is not None:
                limit_now = limit.reading(now.cpu_seconds)
                used = limit.usage(limit_then, limit_now)
                limit_then = limit_now
            if self._tracer is not None:
                self._report(then_ns, now_ns, then, now, own_now - own_then, used)
            then_ns, then, own_then = now_ns, now, own_now
            if limit is None:  # the server was not up yet: from the next interval on
                limit = self.watched.limit()
                limit_then = limit.reading(now.cpu_seconds) if limit else None

    def _report(self, then_ns: int, now_ns: int, then: Reading, now: Reading,
                own_cpu_s: float, used: dict | None) -> None:
        """The interval's span: the server's CPU against its limit and its memory, and the
        meter's own CPU (the instrument's cost, shown beside the server's, never in it)."""
        host, _, port = self.settings.target.rpartition(":")
        attributes = {
            attr.PROCESS_ROLE: TARGET_ROLE,
            attr.SERVER_ADDRESS: host.strip("[]"),
            attr.SERVER_PORT: int(port),
            attr.PROCESS_CPU_US: int((now.cpu_seconds - then.cpu_seconds) * 1e6),
            attr.PROCESS_RSS_BYTES: now.memory_bytes,
            attr.METER_PROCESSES: now.processes,
            attr.METER_CPU_US: int(own_cpu_s * 1e6),
        }
        if used is not None:
            attributes[attr.CPU_LIMIT_MILLICORES] = int(float(used["limit_cores"]) * 1000)
            attributes[attr.CPU_THROTTLED_US] = int(float(used["throttled_seconds"]) * 1e6)
            attributes[attr.CPU_BUSY] = int(bool(used["busy"]))
        self._tracer.start_span(attr.SPAN_PROCESS, kind=SpanKind.INTERNAL, start_time=then_ns,
                                attributes=attributes).end(end_time=now_ns)

    def reset_peak(self) -> None:
        self.peak_memory_bytes = self.latest.memory_bytes

    def snapshot(self) -> dict:
        reading = self.read()
        recent = None
        if self.samples and reading.monotonic_s > self.samples[-1].reading.monotonic_s:
            last = self.samples[-1].reading
            recent = round((reading.cpu_seconds - last.cpu_seconds)
                           / (reading.monotonic_s - last.monotonic_s), 3)
        limit = self.watched.limit()
        cpu = None if limit is None else {
            "limit_cores": round(limit.cores, 3), "limit_source": limit.source,
            "one_loop": False, "counters": asdict(limit.reading(reading.cpu_seconds))}
        return {
            "target": self.settings.target,
            "watching": self.watched.description,
            "problem": self.problem,
            "not_covered": self.watched.gap,
            "processes": reading.processes,
            "processes_seen": len(self.watched.seen),
            "cpu_seconds_total": round(reading.cpu_seconds, 6),
            "cores_recent": recent,
            "memory_bytes": reading.memory_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
            "cpu": cpu,  # against the server's limit, as each service's `cpu`
            "meter": {"cpu_seconds_total": round(cpu_seconds(), 6), "rss_bytes": rss_bytes()},
        }

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self._task is not None:
            self._task.cancel()
        await self._http.stop()
        if self.provider is not None:
            self.provider.shutdown()
