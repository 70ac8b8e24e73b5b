"""Spam waves: open-loop pacing at a set rate and TLS ratio; late and skipped sends are counted."""

from __future__ import annotations

import asyncio
import collections
import math
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from tlsstorm.common.address import TARGET_PATTERN
from tlsstorm.common.cpu_limit import CpuLimit, CpuReading, usage_sentence
from tlsstorm.common.histogram import LatencyHistogram
from tlsstorm.sender.allowlist import Target
from tlsstorm.sender.client import MessageResult, SmtpClient
from tlsstorm.sender.engine import Engine, Report, Schedule, connections_ahead, next_group
from tlsstorm.sender.profiles import PROFILES, ProfileMix

ProfileName = Literal[tuple(PROFILES)]  # type: ignore[valid-type]

_KEPT_WAVES = 100
# A wave hands each connection to the engine this far ahead of its due time, and takes its
# reports at least every TICK_S and at most every MAX_TICK_S (the engine connects on time).
HORIZON_NS = 50_000_000
TICK_S = 0.025
MAX_TICK_S = 0.2
FAR_NS = 10**17  # about three years: a due time no wave reaches


class DeliveryOptions(BaseModel):
    """How each message goes out, for single sends and waves alike."""

    model_config = {"extra": "forbid"}

    size: int = Field(2048, ge=64, le=10 * 1024 * 1024, description="message size in bytes")
    per_connection: int = Field(1, ge=1, le=1000, description="messages per SMTP connection")
    resume: bool = Field(False, description="resume the previous TLS session (tickets)")
    target: str | None = Field(None, max_length=300, pattern=TARGET_PATTERN,
                               description="host:port (default target)")
    profile: ProfileName = Field("default", description="the client's TLS personality")


class WaveShare(BaseModel):
    """This replica's part of a wave that another replica split over its peers: the
    connections whose index in the whole wave is `offset` modulo `stride`, under its id."""

    model_config = {"extra": "forbid"}

    id: str = Field(pattern=r"^[0-9a-f]{12}$")
    offset: int = Field(ge=0)
    stride: int = Field(ge=2, le=64)

    @model_validator(mode="after")
    def _offset_below_stride(self) -> WaveShare:
        if self.offset >= self.stride:
            raise ValueError("offset must be below stride")
        return self


class WaveSpec(DeliveryOptions):
    """A wave: `count` messages, or as many as `rate` gives in `duration_s`."""

    rate: float = Field(gt=0, le=10_000, description="messages per second, kept open-loop")
    count: int | None = Field(None, ge=1, le=1_000_000)
    duration_s: float | None = Field(None, gt=0, le=86_400)
    tls_ratio: float = Field(0.0, ge=0, le=1, description="share of messages sent with STARTTLS")
    concurrency: int = Field(16, ge=1, le=10_000, description="connections in flight at most")
    profiles: dict[ProfileName, float] | None = Field(
        None, description="a mix of TLS personalities over the STARTTLS connections, e.g. "
        '{"mta": 0.3, "bot-tls12": 0.7} (shares; instead of profile)')
    share: WaveShare | None = Field(
        None, description="set by a replica that splits a wave over its peers, not by users")

    @model_validator(mode="after")
    def _shares_positive(self) -> WaveSpec:
        if self.profiles is not None and (not any(v > 0 for v in self.profiles.values())
                                          or any(v < 0 for v in self.profiles.values())):
            raise ValueError("profiles: shares are >= 0 and at least one is > 0")
        return self

    @model_validator(mode="after")
    def _count_or_duration(self) -> WaveSpec:
        if (self.count is None) == (self.duration_s is None):
            raise ValueError("give exactly one of count or duration_s")
        return self

    @property
    def total_messages(self) -> int:
        if self.count is not None:
            return self.count
        return max(1, math.ceil(self.rate * (self.duration_s or 0)))


def _connections(spec: WaveSpec, offset: int, stride: int) -> range:
    """The indexes, in the whole wave, of one share's connections."""
    return range(offset, math.ceil(spec.total_messages / spec.per_connection), stride)


def messages_in(spec: WaveSpec, offset: int, stride: int) -> int:
    """The messages one share of a wave sends: `per_connection` on each of its connections,
    less what the wave's last connection lacks if it is this share's (counted, not summed:
    a wave may have a million connections, and this runs on the loop that paces the others)."""
    connections = _connections(spec, offset, stride)
    if not connections:
        return 0
    last = connections.stop - 1  # the wave's last connection
    lacking = (last + 1) * spec.per_connection - spec.total_messages
    return len(connections) * spec.per_connection - (lacking if connections[-1] == last else 0)


def is_tls(index: int, ratio: float) -> bool:
    """Spread TLS evenly: exactly floor(n * ratio) of the first n messages use STARTTLS."""
    return math.floor((index + 1) * ratio) > math.floor(index * ratio)


class Wave:
    """One running or finished wave and its counters."""

    def __init__(self, spec: WaveSpec, target: Target, client: SmtpClient, cpu: CpuLimit,
                 stride: int = 1) -> None:
        """`stride` > 1: this replica sends the first of that many shares (offset 0); `cpu`:
        the limit this sender runs under, read over the wave to say whether it limited it."""
        share = spec.share
        self.id = share.id if share else uuid.uuid4().hex[:12]
        self.offset, self.stride = (share.offset, share.stride) if share else (0, stride)
        self.spec = spec
        self.target = target
        self.client = client
        self.status: Literal["running", "completed", "stopped", "failed"] = "running"
        self.started_unix_s = time.time()
        self.ended_unix_s: float | None = None
        self._cpu = cpu
        self._cpu_started = cpu.reading()
        self._cpu_ended: CpuReading | None = None
        self._telemetry_started_ns = client.telemetry.cpu_ns()
        self._telemetry_ended_ns: int | None = None
        self.scheduled = 0
        self.late = 0
        self.skipped = 0
        self.in_flight = 0
        self.by_mode = {mode: _ModeCounters() for mode in ("plain", "tls")}
        self.errors: collections.Counter[str] = collections.Counter()
        self._task: asyncio.Task | None = None
        self._mix = ProfileMix(spec.profiles) if spec.profiles else None
        self.by_profile: collections.Counter[str] = collections.Counter()
        self._connections = _connections(spec, self.offset, self.stride)
        self.total = messages_in(spec, self.offset, self.stride)
        self.peers: list[str] | None = None  # the replicas holding the other parts, once known
        self.others = OtherParts(self.id, self.stride, spec.total_messages)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        """Connection `index` of the whole wave is due at index x period, whichever replica
        sends it; its TLS flag comes from the whole wave's exact sequence. The engine connects
        each when due, or skips it while `concurrency` are in flight; this loop hands them over
        a little ahead and takes the reports, waking a few dozen times a second at any rate."""
        spec = self.spec
        group = next_group()
        engine: Engine | None = None
        try:
            engine = self.client.engine
            # A rate near zero makes the period infinite: the first connection is due at once,
            # the others too far off to come (FAR_NS keeps the due times in the engine's range).
            period_ns = spec.per_connection / spec.rate * 1e9
            tolerance_ns = int(min(max(0.005e9, period_ns * self.stride), FAR_NS))
            concurrency = math.ceil(spec.concurrency / self.stride)
            # Large messages: what waits in the engine ahead of its due time is bounded in bytes.
            most_handed = concurrency + connections_ahead(spec.size, spec.per_connection, 10**6)
            started = time.perf_counter_ns()
            for index in self._connections:
                due = started + (int(min(index * period_ns, FAR_NS)) if index else 0)
                while ((ahead := due - HORIZON_NS - time.perf_counter_ns()) > 0
                       or self.in_flight >= most_handed):
                    engine.take()
                    if ahead <= 0 and self.in_flight < most_handed:
                        break
                    await asyncio.sleep(min(max(ahead / 1e9, TICK_S), MAX_TICK_S))
                batch = min(spec.per_connection, spec.total_messages - index * spec.per_connection)
                self.scheduled += batch
                self._launch(is_tls(index, spec.tls_ratio), batch,
                             Schedule(due, group, concurrency), due + tolerance_ns)
            await self._reports_in(engine)
            self.status = "completed"
        except asyncio.CancelledError:
            self.status = "stopped"
            if engine is not None:
                engine.cancel(group)
                await self._reports_in(engine)
        except Exception as error:  # a bug must still end the wave visibly
            self.status = "failed"
            self.errors[f"wave: {type(error).__name__}: {error}"] += 1
        finally:
            self.ended_unix_s = time.time()
            self._cpu_ended = self._cpu.reading()
            self._telemetry_ended_ns = self.client.telemetry.cpu_ns()

    async def _reports_in(self, engine: Engine) -> None:
        """Until every connection handed over has its report."""
        while self.in_flight:
            engine.take()
            if self.in_flight:
                await asyncio.sleep(TICK_S)

    def _launch(self, tls: bool, batch: int, schedule: Schedule, late_after_ns: int) -> None:
        """One connection to the engine; counted when its report comes (`in_flight` holds it
        from now: the engine's limit counts only the connections it has begun)."""
        self.in_flight += 1
        profile = self._mix.next() if tls and self._mix else self.spec.profile
        if tls:
            self.by_profile[profile] += batch

        def done(report: Report, results: list[MessageResult]) -> None:
            self.in_flight -= 1
            if report.get("cancelled") or report.get("skipped"):
                if tls:
                    self.by_profile[profile] -= batch
                if report.get("cancelled"):  # stopped before it was due
                    self.scheduled -= batch
                else:
                    self.skipped += batch
                return
            if report["start_ns"] > late_after_ns:
                self.late += batch
            counters = self.by_mode["tls" if tls else "plain"]
            for result in results:
                counters.add(result)
                if result.error:
                    self.errors[result.error.split(":")[0]] += 1

        self.client.submit(self.target, tls, batch, self.spec.size, schedule, done,
                           wave_id=self.id, resume=self.spec.resume, profile=profile)

    def as_dict(self, histograms: bool = False) -> dict[str, Any]:
        """With `histograms`, each mode's latency histograms too (for merging shares)."""
        done = sum(counters.sent for counters in self.by_mode.values())
        elapsed = (self.ended_unix_s or time.time()) - self.started_unix_s
        # Late and skipped sends mean nothing about the target if this sender was the limit.
        cpu = self._cpu.usage(self._cpu_started, self._cpu_ended if self._cpu_ended is not None
                              else self._cpu.reading())
        telemetry_ns = (self._telemetry_ended_ns if self._telemetry_ended_ns is not None
                        else self.client.telemetry.cpu_ns()) - self._telemetry_started_ns
        return {
            "id": self.id,
            "status": self.status,
            "spec": self.spec.model_dump(),
            "target": self.target.label,
            "total": self.total,
            "scheduled": self.scheduled,
            "done": done,
            "late": self.late,
            "skipped": self.skipped,
            "in_flight": self.in_flight,
            "started_unix_s": self.started_unix_s,
            "ended_unix_s": self.ended_unix_s,
            "elapsed_s": round(elapsed, 3),
            "achieved_rate": round(done / elapsed, 2) if elapsed > 0 else None,
            "plain": self.by_mode["plain"].as_dict(histograms),
            "tls": self.by_mode["tls"].as_dict(histograms),
            "errors": dict(self.errors),
            "starttls_by_profile": dict(+self.by_profile),  # the profiles of those begun
            "sender_cpu": cpu,
            # Of it, building and exporting spans (0 with tracing off): no message's cost.
            "sender_telemetry_seconds": round(telemetry_ns / 1e9, 6),
            "engine": self.client.engine_choice.name,
            "limited_by": ["sender"] if cpu["busy"] else [],
            "limit": self._limit(cpu) if cpu["busy"] else None,
        }

    def _limit(self, cpu: dict[str, Any]) -> str:
        """Why this sender limited the wave: its CPU, and the engine when it is the reference
        one (several times the native engine's CPU per message)."""
        sentence = usage_sentence("sender", cpu)
        choice = self.client.engine_choice
        if choice.native:
            return sentence
        return f"{sentence}, sending with the reference engine: {choice.why}"


class _ModeCounters:
    __slots__ = ("bytes_received", "bytes_sent", "failed", "handshake_ms", "ok", "total_ms")

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.handshake_ms = LatencyHistogram()
        self.total_ms = LatencyHistogram()

    @property
    def sent(self) -> int:
        return self.ok + self.failed

    def add(self, result: MessageResult) -> None:
        if result.ok:
            self.ok += 1
        else:
            self.failed += 1
        self.bytes_sent += result.bytes_sent
        self.bytes_received += result.bytes_received
        self.total_ms.record(result.total_ms)
        if result.handshake_ms is not None:
            self.handshake_ms.record(result.handshake_ms)

    def as_dict(self, histograms: bool = False) -> dict[str, Any]:
        counts = {
            "ok": self.ok,
            "failed": self.failed,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "handshake_ms": self.handshake_ms.summary(),
            "total_ms": self.total_ms.summary(),
        }
        if histograms:
            counts["histograms"] = {"handshake_ms": self.handshake_ms.state(),
                                    "total_ms": self.total_ms.state()}
        return counts


class OtherParts:
    """The parts of a split wave that other replicas send, as last read from them or handed
    over by a replica stopping, by offset: (the replica, its part as Wave.as_dict gives it
    with histograms). A part's later figures win over earlier ones, so a final part handed
    over is not replaced by an older reading that another replica passes on."""

    def __init__(self, wave_id: str, stride: int, total_messages: int) -> None:
        self.wave_id = wave_id
        self.stride = stride
        self.total_messages = total_messages
        self.by_offset: dict[int, tuple[str, dict[str, Any]]] = {}

    def keep(self, offset: int, replica: str, part: dict[str, Any]) -> None:
        kept = self.by_offset.get(offset)
        if kept is None or _progress(part) >= _progress(kept[1]):
            self.by_offset[offset] = (replica, part)


def _progress(part: dict[str, Any]) -> tuple[int, bool]:
    return part["done"], part["status"] != "running"


class WaveBook:
    """The running and recent waves, bounded; and the parts of waves this replica sends no
    part of, handed to it by replicas that stopped (a rollout replaces every sender: the
    last ones hand the whole wave to their successors)."""

    def __init__(self) -> None:
        self.waves: collections.OrderedDict[str, Wave] = collections.OrderedDict()
        self.adopted: collections.OrderedDict[str, OtherParts] = collections.OrderedDict()

    def adopt(self, wave_id: str, stride: int, total_messages: int) -> OtherParts:
        if wave_id not in self.adopted:
            self.adopted[wave_id] = OtherParts(wave_id, stride, total_messages)
            while len(self.adopted) > _KEPT_WAVES:
                self.adopted.popitem(last=False)
        return self.adopted[wave_id]

    def add(self, wave: Wave) -> None:
        self.waves[wave.id] = wave
        while len(self.waves) > _KEPT_WAVES:
            oldest_id = next(iter(self.waves))
            if self.waves[oldest_id].status == "running":
                break
            self.waves.popitem(last=False)

    def stop_all(self) -> None:
        for wave in self.waves.values():
            wave.stop()

    async def wait_all(self) -> None:
        """Until every wave has ended and its messages in flight have their reports."""
        for wave in list(self.waves.values()):
            await wave.wait()
