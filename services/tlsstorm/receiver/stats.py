"""Aggregates finished sessions per mode (plain / tls), overall and per wave."""

from __future__ import annotations

import collections
import time
from typing import Any

from tlsstorm.common.histogram import LatencyHistogram
from tlsstorm.common.process import cpu_seconds, rss_bytes
from tlsstorm.common.telemetry import SpanCounts
from tlsstorm.receiver.cpu_meter import LoopMeter
from tlsstorm.receiver.session import SessionRecord

MODES = ("plain", "tls")
_KEPT_WAVES = 256


class ModeStats:
    """Counters of one mode; every field is a sum so that waves and totals add up."""

    __slots__ = (
        "cpu_ns", "errors", "failed_handshake_cpu_ns", "handshake_cpu_ns", "handshake_ms",
        "handshakes_failed",
        "handshakes_ok", "handshakes_resumed", "message_bytes", "messages", "queue_fsyncs",
        "replies", "session_ms", "sessions", "wire_bytes_in", "wire_bytes_out",
    )

    def __init__(self) -> None:
        self.sessions = 0
        self.messages = 0
        self.message_bytes = 0
        self.handshakes_ok = 0
        self.handshakes_failed = 0
        self.handshakes_resumed = 0
        self.handshake_ms = LatencyHistogram()
        self.handshake_cpu_ns = 0
        self.failed_handshake_cpu_ns = 0  # what handshakes that did not finish cost (gated)
        self.session_ms = LatencyHistogram()
        self.wire_bytes_in = 0
        self.wire_bytes_out = 0
        self.cpu_ns = 0
        self.queue_fsyncs = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.replies: collections.Counter[str] = collections.Counter()

    def add(self, record: SessionRecord) -> None:
        self.sessions += 1
        self.messages += record.messages
        self.message_bytes += record.message_bytes
        self.wire_bytes_in += record.wire_bytes_in
        self.wire_bytes_out += record.wire_bytes_out
        self.queue_fsyncs += record.queue_fsyncs
        self.session_ms.record(record.duration_ms)
        if record.handshake_ok is not None:
            if record.handshake_ok:
                self.handshakes_ok += 1
                self.handshake_ms.record(record.handshake_ms or 0.0)
                self.handshake_cpu_ns += record.handshake_cpu_ns
                if record.resumed:
                    self.handshakes_resumed += 1
            else:
                self.handshakes_failed += 1
                self.failed_handshake_cpu_ns += record.handshake_cpu_ns
        for kind in record.errors:
            self.errors[kind] += 1
        self.replies.update(record.replies)

    def as_dict(self) -> dict[str, Any]:
        per_message = self.messages or None
        return {
            "sessions": self.sessions,
            "messages": self.messages,
            "message_bytes": self.message_bytes,
            "handshakes_ok": self.handshakes_ok,
            "handshakes_failed": self.handshakes_failed,
            "handshakes_resumed": self.handshakes_resumed,
            "handshake_ms": self.handshake_ms.summary(),
            # Wall time above runs from the first do_handshake and includes waiting for the
            # client; this is the CPU the receiver spent in it.
            "handshake_cpu_ms_mean": (round(self.handshake_cpu_ns / 1e6 / self.handshakes_ok, 4)
                                      if self.handshakes_ok else None),
            "failed_handshake_cpu_ms_mean": (
                round(self.failed_handshake_cpu_ns / 1e6 / self.handshakes_failed, 4)
                if self.handshakes_failed else None),
            "session_ms": self.session_ms.summary(),
            "wire_bytes_in": self.wire_bytes_in,
            "wire_bytes_out": self.wire_bytes_out,
            "session_cpu_seconds": round(self.cpu_ns / 1e9, 6),
            "cpu_ms_per_message": (
                round(self.cpu_ns / 1e6 / per_message, 4) if per_message else None
            ),
            "queue_fsyncs": self.queue_fsyncs,
            "errors": dict(self.errors),
            "replies": dict(sorted(self.replies.items())),
        }


class WindowStats:
    """Both modes for one window (everything since reset, or one wave)."""

    __slots__ = ("first_unix_s", "last_unix_s", "modes")

    def __init__(self) -> None:
        self.modes = {mode: ModeStats() for mode in MODES}
        self.first_unix_s: float | None = None
        self.last_unix_s: float | None = None

    def add(self, record: SessionRecord) -> None:
        self.modes[record.mode].add(record)
        now = record.ended_ns / 1e9
        if self.first_unix_s is None:
            self.first_unix_s = record.started_ns / 1e9
        self.last_unix_s = now

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {mode: stats.as_dict() for mode, stats in self.modes.items()}
        body["first_session_unix_s"] = self.first_unix_s
        body["last_session_unix_s"] = self.last_unix_s
        return body


class ReceiverStats:
    """Everything since the last reset, plus the most recent waves by id."""

    def __init__(self, telemetry: SpanCounts) -> None:
        self.started_unix_s = time.time()
        self.meter: LoopMeter | None = None
        self.telemetry = telemetry
        self.reset()

    def reset(self) -> None:
        self.total = WindowStats()
        self.waves: collections.OrderedDict[str, WindowStats] = collections.OrderedDict()
        self.reset_unix_s = time.time()
        self.reset_cpu_seconds = cpu_seconds()
        self.reset_meter = self.meter.snapshot() if self.meter else {}
        self.reset_telemetry = self.telemetry.cpu_seconds()

    def add(self, record: SessionRecord) -> None:
        """Count a finished session, all but its CPU (charge() adds that once it is sealed)."""
        self.total.add(record)
        if record.wave_id is not None:
            wave = self.waves.get(record.wave_id)
            if wave is None:
                wave = self.waves[record.wave_id] = WindowStats()
                if len(self.waves) > _KEPT_WAVES:
                    self.waves.popitem(last=False)
            wave.add(record)

    def charge(self, record: SessionRecord) -> None:
        self.total.modes[record.mode].cpu_ns += record.cpu_ns
        wave = self.waves.get(record.wave_id) if record.wave_id is not None else None
        if wave is not None:
            wave.modes[record.mode].cpu_ns += record.cpu_ns

    def process(self) -> dict[str, Any]:
        """The process's CPU since reset = what sessions were charged + telemetry (building
        spans, and exporting them in the exporter's thread) + the rest: the loop's polling,
        callbacks of no session (the HTTP API, the sampler), the interpreter's own work, and
        sessions still open."""
        now = time.time()
        cpu_since_reset = cpu_seconds() - self.reset_cpu_seconds
        charged = sum(stats.cpu_ns for stats in self.total.modes.values()) / 1e9
        meter = {name: round(value - self.reset_meter.get(name, 0.0), 6)
                 for name, value in (self.meter.snapshot() if self.meter else {}).items()}
        telemetry = {name: round(value - self.reset_telemetry[name], 6)
                     for name, value in self.telemetry.cpu_seconds().items()}
        telemetry_total = sum(telemetry.values())
        return {
            "cpu_seconds": round(cpu_since_reset, 6),
            "cpu_seconds_charged": round(charged, 6),
            "cpu_seconds_telemetry": round(telemetry_total, 6),
            "telemetry": telemetry,
            "cpu_seconds_unattributed": round(cpu_since_reset - charged - telemetry_total, 6),
            "charged_share": round(charged / cpu_since_reset, 4) if cpu_since_reset else None,
            "telemetry_share": (round(telemetry_total / cpu_since_reset, 4) if cpu_since_reset
                                else None),
            "meter": meter,
            "cpu_seconds_total": round(cpu_seconds(), 6),
            "rss_bytes": rss_bytes(),
            "uptime_s": round(now - self.started_unix_s, 3),
            "since_reset_s": round(now - self.reset_unix_s, 3),
        }

    def snapshot(self, wave_id: str | None = None) -> dict[str, Any] | None:
        if wave_id is None:
            window = self.total
        else:
            window = self.waves.get(wave_id)
            if window is None:
                return None
        body = window.as_dict()
        body["wave_id"] = wave_id
        body["process"] = self.process()
        return body
