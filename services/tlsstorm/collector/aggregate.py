"""Spans in, costs out: per wave x service x role x mode x second, bounded in memory."""

from __future__ import annotations

import collections
import math
import time
from typing import Any, NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tlsstorm.common import attributes as attr
from tlsstorm.common import fingerprints
from tlsstorm.common.histogram import LatencyHistogram
from tlsstorm.common.memory_fit import MemorySamples
from tlsstorm.common.process_report import GENERATOR_ROLES

# The two sides; process samples of every load generator (senders, Locust workers) are SENDER's.
# A meter's samples of a mail server tlsstorm does not run are TARGET's, keyed by its address.
RECEIVER, SENDER, TARGET = "receiver", "sender", "target"
PLAIN, STARTTLS = "plain", "starttls"
MODES = (PLAIN, STARTTLS)
PROCESS = "process"  # the cells of a service's process CPU samples: no wave, no mode

# Only these attributes are read, each from the one AnyValue field its producer writes.
_INT_ATTRIBUTES = {
    attr.SMTP_MESSAGES: "messages",
    attr.MESSAGE_BYTES: "message_bytes",
    attr.WIRE_BYTES_IN: "wire_in",
    attr.WIRE_BYTES_OUT: "wire_out",
    attr.SESSION_CPU_US: "cpu_us",
    attr.HANDSHAKE_CPU_US: "handshake_cpu_us",
    attr.PROCESS_CPU_US: "process_cpu_us",
    attr.PROCESS_CHARGED_US: "charged_cpu_us",
    attr.PROCESS_TELEMETRY_US: "telemetry_cpu_us",
    attr.PROCESS_RSS_BYTES: "rss_bytes",
    attr.OPEN_PLAIN_SESSIONS: "open_plain",
    attr.OPEN_TLS_SESSIONS: "open_tls",
    attr.PEAK_PLAIN_SESSIONS: "peak_plain",
    attr.PEAK_TLS_SESSIONS: "peak_tls",
    attr.CPU_LIMIT_MILLICORES: "limit_millicores",
    attr.CPU_THROTTLED_US: "throttled_us",
    attr.CPU_BUSY: "busy_samples",
    attr.SERVER_PORT: "server_port",
    attr.METER_CPU_US: "meter_cpu_us",
    attr.METER_PROCESSES: "processes",
    attr.PROCESS_STARTED: "starts",
}
_STRING_ATTRIBUTES = {attr.MODE: "mode", attr.WAVE_ID: "wave", attr.ERROR_TYPE: "error",
                      attr.SIDE: "side", attr.CERT_CHAIN: "chain",
                      attr.PROCESS_ROLE: "process_role", attr.TLS_CLIENT_JA4: "ja4",
                      attr.GATE_DECISION: "gate_decision", attr.SERVER_ADDRESS: "server_address"}
_STATUS_ERROR = 2

CellKey = tuple[str, str, str, str, int]  # wave, service, role, mode, unix second
# A cell's counters, which merge by addition and are stored as they are.
_SUMS = ("sessions", "messages", "message_bytes", "wire_in", "wire_out", "cpu_us",
         "handshakes_ok", "handshakes_failed", "handshake_cpu_us", "process_cpu_us",
         "charged_cpu_us", "telemetry_cpu_us", "rss_bytes", "open_plain", "open_tls", "samples",
         "limit_millicores", "throttled_us", "busy_samples", "meter_cpu_us", "processes",
         "peak_rss_bytes", "peak_plain", "peak_tls", "starts")


class Timeline(NamedTuple):
    """Receiver sessions over time: per mode, (seconds from the first, sessions/s, p95 ms)."""

    bin_seconds: int
    series: dict[str, list[tuple[int, float, float | None]]]


class Cell:
    """Sums and histograms of one key; cells merge by addition."""

    __slots__ = (
        "busy_samples",
        "chains",
        "charged_cpu_us",
        "cpu_us",
        "duration_ms",
        "errors",
        "fingerprints",
        "handshake_cpu_us",
        "handshake_ms",
        "handshakes_failed",
        "handshakes_ok",
        "limit_millicores",
        "message_bytes",
        "messages",
        "meter_cpu_us",
        "open_plain",
        "open_tls",
        "peak_plain",
        "peak_rss_bytes",
        "peak_tls",
        "process_cpu_us",
        "processes",
        "rss_bytes",
        "samples",
        "sessions",
        "starts",
        "targets",
        "telemetry_cpu_us",
        "throttled_us",
        "wire_in",
        "wire_out",
    )

    def __init__(self) -> None:
        self.sessions = 0
        self.messages = 0
        self.message_bytes = 0
        self.wire_in = 0
        self.wire_out = 0
        self.cpu_us = 0
        self.handshakes_ok = 0
        self.handshakes_failed = 0
        self.handshake_cpu_us = 0
        self.process_cpu_us = 0
        self.charged_cpu_us = 0
        self.telemetry_cpu_us = 0  # building and exporting spans: the instrument's own cost
        # Process samples: sums over the second's samples (usually one per receiver).
        self.rss_bytes = 0
        self.open_plain = 0
        self.open_tls = 0
        # The most sessions open at once in the second at any one receiver (kept as sums,
        # read per cell, like peak_rss_bytes).
        self.peak_plain = 0
        self.peak_tls = 0
        self.samples = 0
        # Each second's CPU limit, time throttled and whether the service was busy (throttled
        # or above 85% of its limit): a sender busy in a wave's seconds limited that wave.
        self.limit_millicores = 0
        self.throttled_us = 0
        self.busy_samples = 0
        self.starts = 0  # processes whose first sample this is: a start or a restart
        # A meter's samples: its own CPU (the instrument's cost), the server's live processes
        # summed over the samples, and the highest memory of any sample (kept as a sum field:
        # merging cells of different seconds adds it, so peaks are read per cell).
        self.meter_cpu_us = 0
        self.processes = 0
        self.peak_rss_bytes = 0
        self.errors: dict[str, int] = {}
        self.targets: dict[str, int] = {}  # the sender's messages by the server aimed at
        self.chains: dict[str, int] = {}  # certificate chain served -> sessions
        self.fingerprints: fingerprints.FingerprintCounts = {}  # the receiver gate's ClientHellos
        self.duration_ms = LatencyHistogram()
        self.handshake_ms = LatencyHistogram()

    def merge(self, other: Cell) -> None:
        for name in _SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count
        for chain, count in other.chains.items():
            self.chains[chain] = self.chains.get(chain, 0) + count
        for target, count in other.targets.items():
            self.targets[target] = self.targets.get(target, 0) + count
        fingerprints.merge(self.fingerprints, other.fingerprints)
        self.duration_ms.merge(other.duration_ms)
        self.handshake_ms.merge(other.handshake_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in _SUMS},
            "errors": self.errors,
            "chains": self.chains,
            "targets": self.targets,
            "fingerprints": self.fingerprints,
            "duration_ms": _histogram_json(self.duration_ms),
            "handshake_ms": _histogram_json(self.handshake_ms),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cell:
        cell = cls()
        for name in _SUMS:
            setattr(cell, name, int(data.get(name, 0)))
        cell.errors = {str(k): int(v) for k, v in data.get("errors", {}).items()}
        cell.chains = {str(k): int(v) for k, v in data.get("chains", {}).items()}
        cell.targets = {str(k): int(v) for k, v in data.get("targets", {}).items()}
        cell.fingerprints = {str(k): [int(x) for x in v]
                             for k, v in data.get("fingerprints", {}).items()}
        cell.duration_ms = _histogram_from(data.get("duration_ms", {}))
        cell.handshake_ms = _histogram_from(data.get("handshake_ms", {}))
        return cell

    def summary(self) -> dict[str, Any]:
        per_message = self.messages or None
        return {
            "sessions": self.sessions,
            "messages": self.messages,
            "errors": dict(self.errors),
            "certificate_chains": dict(self.chains),
            "fingerprints": fingerprints.top(self.fingerprints, fingerprints.SESSIONS),
            "fingerprints_by_cpu": fingerprints.top(self.fingerprints, fingerprints.CPU_US),
            "handshakes_ok": self.handshakes_ok,
            "handshakes_failed": self.handshakes_failed,
            "handshake_ms": self.handshake_ms.summary(),
            "handshake_cpu_ms_mean": _ratio(self.handshake_cpu_us / 1000,
                                            self.handshakes_ok or None),
            "duration_ms": self.duration_ms.summary(),
            "wire_bytes_in": self.wire_in,
            "wire_bytes_out": self.wire_out,
            "message_bytes": self.message_bytes,
            "cpu_ms_per_message": _ratio(self.cpu_us / 1000, per_message),
            "wire_bytes_in_per_message": _ratio(self.wire_in, per_message),
            "wire_bytes_out_per_message": _ratio(self.wire_out, per_message),
            "wire_bytes_out_per_session": _ratio(self.wire_out, self.sessions or None),
            "message_bytes_per_message": _ratio(self.message_bytes, per_message),
        }


def _ratio(numerator: float, denominator: float | None) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _histogram_json(histogram: LatencyHistogram) -> dict[str, Any]:
    return {"counts": {str(k): v for k, v in histogram.counts.items()}, "count": histogram.count,
            "sum_ms": histogram.sum_ms, "max_ms": histogram.max_ms}


def _histogram_from(data: dict[str, Any]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    histogram.counts = {int(k): int(v) for k, v in data.get("counts", {}).items()}
    histogram.count = int(data.get("count", 0))
    histogram.sum_ms = float(data.get("sum_ms", 0.0))
    histogram.max_ms = float(data.get("max_ms", 0.0))
    return histogram


class Aggregator:
    """Folds tlsstorm's spans into cells; other spans are counted and passed over."""

    def __init__(self, retention_s: float, max_cells: int) -> None:
        self.retention_s = retention_s
        self.max_cells = max_cells
        self.cells: dict[CellKey, Cell] = {}
        self.dirty: set[CellKey] = set()
        self.spans_received = 0
        self.spans_aggregated = 0
        self.spans_rejected = 0

    def ingest(self, request: ExportTraceServiceRequest) -> tuple[int, str]:
        """Aggregate a request; return (rejected span count, reason)."""
        rejected = 0
        for resource_spans in request.resource_spans:
            service = "unknown"
            for kv in resource_spans.resource.attributes:
                if kv.key == "service.name":
                    service = kv.value.string_value or service
                    break
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans_received += 1
                    if len(span.trace_id) != 16 or len(span.span_id) != 8:
                        rejected += 1
                        continue
                    name = span.name
                    if name in (attr.SPAN_SESSION, attr.SPAN_SEND, attr.SPAN_HANDSHAKE,
                                attr.SPAN_PROCESS):
                        self._fold(service, span)
        self.spans_rejected += rejected
        reason = f"{rejected} spans had no valid trace or span id" if rejected else ""
        return rejected, reason

    def _fold(self, service: str, span) -> None:
        values: dict[str, Any] = {}
        for kv in span.attributes:
            field = _INT_ATTRIBUTES.get(kv.key)
            if field is not None:
                values[field] = kv.value.int_value
                continue
            field = _STRING_ATTRIBUTES.get(kv.key)
            if field is not None:
                values[field] = kv.value.string_value
        failed = span.status.code == _STATUS_ERROR
        duration_ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
        name = span.name
        if name == attr.SPAN_HANDSHAKE:
            role = RECEIVER if values.get("side") == "server" else SENDER
            mode = STARTTLS
        elif name == attr.SPAN_PROCESS:
            process_role = values.get("process_role")
            role = SENDER if process_role in GENERATOR_ROLES else \
                TARGET if process_role == TARGET else RECEIVER
            mode, values["wave"] = PROCESS, ""
            if role == TARGET:  # keyed by the server's address, not by the meter's name
                service = _address(values)
        else:
            role = RECEIVER if name == attr.SPAN_SESSION else SENDER
            mode = values.get("mode", PLAIN)
            if mode not in MODES:
                mode = PLAIN
        key = (values.get("wave", ""), service, role, mode, span.end_time_unix_nano // 10**9)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Cell()
        self.dirty.add(key)
        self.spans_aggregated += 1
        if name == attr.SPAN_PROCESS:
            for field in ("process_cpu_us", "charged_cpu_us", "telemetry_cpu_us", "rss_bytes",
                          "open_plain", "open_tls", "limit_millicores", "throttled_us",
                          "busy_samples", "meter_cpu_us", "processes", "starts"):
                setattr(cell, field, getattr(cell, field) + values.get(field, 0))
            cell.peak_rss_bytes = max(cell.peak_rss_bytes, values.get("rss_bytes", 0))
            cell.peak_plain = max(cell.peak_plain, values.get("peak_plain", 0))
            cell.peak_tls = max(cell.peak_tls, values.get("peak_tls", 0))
            cell.samples += 1
            return
        if name == attr.SPAN_HANDSHAKE:
            if failed:
                cell.handshakes_failed += 1
            else:
                cell.handshakes_ok += 1
                cell.handshake_ms.record(duration_ms)
                cell.handshake_cpu_us += values.get("handshake_cpu_us", 0)
            return
        cell.sessions += 1 if name == attr.SPAN_SESSION else 0
        messages = values.get("messages", 1 if name == attr.SPAN_SEND else 0)
        cell.messages += messages
        if name == attr.SPAN_SEND and "server_address" in values:
            target = _address(values)
            cell.targets[target] = cell.targets.get(target, 0) + messages
        cell.message_bytes += values.get("message_bytes", 0)
        cell.wire_in += values.get("wire_in", 0)
        cell.wire_out += values.get("wire_out", 0)
        cell.cpu_us += values.get("cpu_us", 0)
        cell.duration_ms.record(duration_ms)
        if failed:
            kind = values.get("error") or "error"
            cell.errors[kind] = cell.errors.get(kind, 0) + 1
        if "chain" in values:
            cell.chains[values["chain"]] = cell.chains.get(values["chain"], 0) + 1
        if "ja4" in values or "gate_decision" in values:
            fingerprints.count(cell.fingerprints, values.get("ja4") or "unreadable",
                               values.get("cpu_us", 0), values.get("gate_decision") == "denied")

    def evict(self, now_s: float | None = None) -> list[CellKey]:
        """Drop cells past retention or over the cap (oldest first); return what was dropped."""
        now_s = time.time() if now_s is None else now_s
        oldest_kept = now_s - self.retention_s
        dropped = [key for key in self.cells if key[4] < oldest_kept]
        overflow = len(self.cells) - len(dropped) - self.max_cells
        if overflow > 0:
            remaining = sorted((key for key in self.cells if key[4] >= oldest_kept),
                               key=lambda key: key[4])
            dropped += remaining[:overflow]
        for key in dropped:
            del self.cells[key]
            self.dirty.discard(key)
        return dropped

    def has_wave(self, wave: str) -> bool:
        return any(key[0] == wave and key[3] != PROCESS for key in self.cells)

    def select(self, wave: str | None, since: float | None, until: float | None):
        """The cells of sessions, messages and handshakes (not the process samples)."""
        for key, cell in self.cells.items():
            if key[3] == PROCESS:
                continue
            if wave is not None and key[0] != wave:
                continue
            if since is not None and key[4] < since:
                continue
            if until is not None and key[4] > until:
                continue
            yield key, cell

    def summary(self, wave: str | None = None, since: float | None = None,
                until: float | None = None) -> dict[str, Any]:
        groups: dict[tuple[str, str, str], Cell] = collections.defaultdict(Cell)
        first = last = None
        for (_, service, role, mode, second), cell in self.select(wave, since, until):
            groups[service, role, mode].merge(cell)
            first = second if first is None else min(first, second)
            last = second if last is None else max(last, second)
        by_role: dict[str, dict[str, Cell]] = {RECEIVER: {}, SENDER: {}}
        for (_, role, mode), cell in groups.items():
            by_role[role].setdefault(mode, Cell()).merge(cell)
        # The process's own samples cover the seconds asked for, or else the selection's.
        window_first = int(since) if since is not None and wave is None else first
        window_last = int(until) if until is not None and wave is None else last
        process = memory = generators = delivery = None
        if window_first is not None and window_last is not None:
            samples, messages = self._receiver_window(window_first, window_last)
            process = _process_figures(samples, messages, window_last - window_first + 2)
            memory = _memory_figures(samples)
            generators = self._generator_figures(window_first, window_last)
            delivery = _delivery(by_role, samples, window_first)
        return {
            "filter": {"wave": wave, "since": since, "until": until},
            "process": process,
            "memory": memory,
            "generators": generators,
            "delivery": delivery,
            "first_unix_s": first,
            "last_unix_s": last,
            "spans": {"received": self.spans_received, "aggregated": self.spans_aggregated,
                      "rejected": self.spans_rejected},
            "receiver": _cost(by_role[RECEIVER]),
            "sender": _cost(by_role[SENDER]),
            "groups": [
                {"service": service, "role": role, "mode": mode, **cell.summary()}
                for (service, role, mode), cell in sorted(groups.items())
            ],
        }

    def _receiver_window(self, first: int, last: int) -> tuple[list[tuple[int, Cell]], int]:
        """The receivers' process samples over the seconds [first, last + 1] (a sample is keyed
        by the second it ends, so the one that covers the last second of sessions ends in the
        next), and the messages the receivers took in those seconds, whatever their wave."""
        samples, messages = [], 0
        for (_, _, role, mode, second), cell in self.cells.items():
            if role != RECEIVER or not first <= second <= last + 1:
                continue
            if mode == PROCESS:
                samples.append((second, cell))
            else:
                messages += cell.messages
        return samples, messages

    def _generator_figures(self, first: int, last: int) -> dict[str, Any]:
        """Each sender's CPU against its limit over the seconds [first, last]; the ones busy
        in any of them (throttled, or above 85% of the limit) limited what was measured."""
        by_service: dict[str, Cell] = collections.defaultdict(Cell)
        for (_, service, role, mode, second), cell in self.cells.items():
            if role == SENDER and mode == PROCESS and first <= second <= last:
                by_service[service].merge(cell)
        services = []
        for service, cell in sorted(by_service.items()):
            samples = max(cell.samples, 1)
            services.append({
                "service": service, "seconds": cell.samples,
                "cores_mean": round(cell.process_cpu_us / 1e6 / samples, 3),
                "limit_cores": round(cell.limit_millicores / 1000 / samples, 3),
                "busy_seconds": cell.busy_samples,
                "throttled_ms": round(cell.throttled_us / 1000, 1)})
        return {"services": services,
                "limited_by": [entry["service"] for entry in services if entry["busy_seconds"]]}

    def waves(self, target: str | None = None) -> list[dict[str, Any]]:
        """Each wave with its seconds, its sessions at the receiver, and the server it was
        aimed at (the one most of its messages went to, by the sender's spans); with
        `target`, only the waves aimed at it."""
        found: dict[str, dict[str, Any]] = {}
        aimed: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for (wave, _, role, mode, second), cell in self.select(None, None, None):
            entry = found.setdefault(wave, {"wave": wave, "first_unix_s": second,
                                            "last_unix_s": second, PLAIN: 0, STARTTLS: 0,
                                            "sent": {PLAIN: 0, STARTTLS: 0}})
            entry["first_unix_s"] = min(entry["first_unix_s"], second)
            entry["last_unix_s"] = max(entry["last_unix_s"], second)
            if role == RECEIVER:
                entry[mode] += cell.sessions
            elif mode in MODES:
                entry["sent"][mode] += cell.messages
                for address, count in cell.targets.items():
                    aimed[wave][address] = aimed[wave].get(address, 0) + count
        for wave, entry in found.items():
            entry["target"] = max(aimed[wave], key=aimed[wave].__getitem__) \
                if aimed[wave] else None
        return sorted((entry for entry in found.values()
                       if target is None or entry["target"] == target),
                      key=lambda entry: entry["first_unix_s"], reverse=True)

    def targets(self) -> list[dict[str, Any]]:
        """The servers waves were aimed at or a meter watched: whether a meter watched each
        (its CPU is then known) and whether the receiver's spans came from it."""
        metered = {key[1] for key in self.cells if key[2] == TARGET}
        found: dict[str, dict[str, Any]] = {
            address: {"target": address, "metered": True, "receiver": False, "waves": 0}
            for address in metered}
        for entry in self.waves():
            address = entry["target"]
            if address is None:
                continue
            row = found.setdefault(address, {"target": address, "metered": address in metered,
                                             "receiver": False, "waves": 0})
            row["waves"] += 1
            row["receiver"] |= bool(entry[PLAIN] or entry[STARTTLS])
        return sorted(found.values(), key=lambda row: row["target"])

    def wave_alone(self, wave: str, target: str | None = None) -> dict[str, Any] | None:
        """A wave's rate and its server's CPU per message (less telemetry) over seconds it had
        to itself, for the cost model: a wave sent right after another (a sweep's, back to
        back) shares a second with it, and the process samples over that second hold both.
        The receivers' samples (with `target`, that server's meter's) over the wave's seconds,
        as `summary` takes them, when no other wave had sessions in its first or last second;
        else over its steady seconds: the first and last left out, with the samples covering
        them (a sample is keyed by the second it ends). None when that leaves no sample, or
        another wave ran meanwhile (no share of the CPU is the wave's alone)."""
        own: dict[int, int] = collections.defaultdict(int)
        others: set[int] = set()
        aimed = {entry["wave"] for entry in self.waves(target)} if target else set()
        for (cell_wave, _, role, mode, second), cell in self.cells.items():
            if mode == PROCESS:
                continue
            if target is None and role == RECEIVER:
                messages = cell.messages
            elif target is not None and role == SENDER and cell_wave in aimed \
                    and target in cell.targets:
                messages = cell.messages - sum(cell.errors.values())
            else:
                continue
            if cell_wave == wave:
                own[second] += messages
            elif messages:
                others.add(second)
        if not own:
            return None
        first, last = min(own), max(own)
        if any(first < second < last for second in others):
            return None
        steady = first in others or last in others
        if steady:  # the rate of its steady seconds, the CPU of the samples inside them
            seconds, sampled = range(first + 1, last), range(first + 2, last)
        else:  # all its messages and all the CPU over the same window
            seconds = sampled = range(first, last + 2)
        process = Cell()
        for (_, address, role, mode, second), cell in self.cells.items():
            if mode == PROCESS and second in sampled and (
                    role == RECEIVER if target is None else
                    role == TARGET and address == target):
                process.merge(cell)
        messages = sum(own.get(second, 0) for second in seconds)
        if not sampled or not messages or not process.process_cpu_us:
            return None
        cores = (process.process_cpu_us - process.telemetry_cpu_us) / 1e6 / len(sampled)
        rate = messages / len(seconds)
        return {"achieved_rate": round(rate, 3),
                "process_cpu_ms_per_message": round(cores * 1000 / rate, 4),
                "seconds": len(sampled), "window": "steady" if steady else "whole"}

    def target_summary(self, target: str, wave: str | None = None,
                       since: float | None = None, until: float | None = None
                       ) -> dict[str, Any]:
        """A server as the sender saw it (sessions, handshake latency, bytes, outcomes, per
        mode) beside its CPU and memory as its meter read them over the same seconds; for a
        server tlsstorm does not run, where no span comes from its side."""
        groups: dict[str, Cell] = collections.defaultdict(Cell)
        first = last = None
        waves = {entry["wave"] for entry in self.waves(target)}
        for (cell_wave, _, role, mode, second), cell in self.select(wave, since, until):
            if role != SENDER or cell_wave not in waves or target not in cell.targets:
                continue
            groups[mode].merge(cell)
            first = second if first is None else min(first, second)
            last = second if last is None else max(last, second)
        sender = _cost(groups)
        process = generators = None
        if first is not None and last is not None:
            samples = [(second, cell) for (_, address, role, _, second), cell
                       in self.cells.items()
                       if role == TARGET and address == target and first <= second <= last + 1]
            messages = sum(groups[mode].messages - sum(groups[mode].errors.values())
                           for mode in MODES)
            process = _target_figures(samples, messages, last - first + 2)
            generators = self._generator_figures(first, last)
        return {
            "filter": {"target": target, "wave": wave, "since": since, "until": until},
            "target": target,
            "measured_by": "meter" if process else None,
            "first_unix_s": first, "last_unix_s": last,
            "process": process, "generators": generators, "sender": sender,
            "note": "sessions, handshake latency, bytes and outcomes as the sender saw them "
                    "(no span comes from this server); CPU and memory from its meter, all of "
                    "its processes over the same seconds",
        }

    def timeline(self, wave: str | None = None, since: float | None = None,
                 until: float | None = None, max_points: int = 600) -> Timeline:
        """Per receiver mode, sessions/s and p95 session ms in bins of equal width.

        Every bin from the first session to the last is there, the empty ones with 0 sessions
        and no p95, so a chart shows silence as silence rather than joining the busy seconds.
        Bins are one second wide until the span needs more than `max_points` of them.
        """
        per_second: dict[tuple[str, int], Cell] = collections.defaultdict(Cell)
        for (_, _, role, mode, second), cell in self.select(wave, since, until):
            if role == RECEIVER:
                per_second[mode, second].merge(cell)
        if not per_second:
            return Timeline(1, {PLAIN: [], STARTTLS: []})
        first = min(second for _, second in per_second)
        last = max(second for _, second in per_second)
        width = max(1, math.ceil((last - first + 1) / max_points))
        bins = (last - first) // width + 1
        binned: dict[tuple[str, int], Cell] = collections.defaultdict(Cell)
        for (mode, second), cell in per_second.items():
            binned[mode, (second - first) // width].merge(cell)
        series: dict[str, list[tuple[int, float, float | None]]] = {}
        for mode in (PLAIN, STARTTLS):
            points = []
            for index in range(bins):
                cell = binned.get((mode, index))
                points.append((index * width, cell.sessions / width if cell else 0.0,
                               cell.duration_ms.percentile(0.95) if cell else None))
            series[mode] = points
        return Timeline(width, series)

    def distributions(self, wave: str | None = None, since: float | None = None,
                      until: float | None = None) -> dict[str, LatencyHistogram]:
        """Latency histograms for plotting: sessions by mode, handshakes by side."""
        merged: dict[str, LatencyHistogram] = collections.defaultdict(LatencyHistogram)
        for (_, _, role, mode, _), cell in self.select(wave, since, until):
            if role == RECEIVER:
                merged[f"{mode} session"].merge(cell.duration_ms)
            merged[f"handshake ({role})"].merge(cell.handshake_ms)
        return {name: histogram for name, histogram in merged.items() if histogram.count}


def _address(values: dict[str, Any]) -> str:
    """A server as the sender aims at it: host:port ([v6]:port)."""
    host = values.get("server_address", "")
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{values.get('server_port', 0)}"


def _delivery(by_role: dict[str, dict[str, Cell]], samples: list[tuple[int, Cell]],
              first: int) -> dict[str, Any] | None:
    """The messages the senders were told were accepted against those the receivers' sessions
    hold: a receiver that ended without exporting its spans (killed, crashed) shows as messages
    missing, a message counted twice as extra; and the receiver processes that started after
    the selection's first seconds (restarts). None unless both sides' spans are here (a wave
    aimed at another server has no receiver spans)."""
    def accepted(role: str) -> dict[str, int]:
        """A sender's span is one message, failed (refused, lost) with an error; a receiver's
        session holds the messages it accepted."""
        cells = by_role[role]
        return {mode: cells[mode].messages - (sum(cells[mode].errors.values())
                                              if role == SENDER else 0)
                if mode in cells else 0 for mode in MODES}

    sent, received = accepted(SENDER), accepted(RECEIVER)
    if not any(sent.values()) or not any(received.values()):
        return None
    return {"accepted_by_senders": sent, "at_receivers": received,
            "missing_at_receivers": {mode: max(sent[mode] - received[mode], 0)
                                     for mode in MODES},
            "extra_at_receivers": {mode: max(received[mode] - sent[mode], 0) for mode in MODES},
            "receiver_starts": sum(cell.starts for second, cell in samples
                                   if second > first + 1)}


def _process_figures(samples: list[tuple[int, Cell]], messages: int,
                     seconds: int) -> dict[str, Any] | None:
    """The receivers' process CPU over the window beside what they charged to sessions in it and
    what their telemetry cost: what share each figure covers."""
    process = Cell()
    for _, cell in samples:
        process.merge(cell)
    if not process.process_cpu_us:
        return None
    unattributed_us = (process.process_cpu_us - process.charged_cpu_us
                       - process.telemetry_cpu_us)
    return {
        "seconds": seconds,
        "last_sample_unix_s": max(second for second, _ in samples),  # arrived up to here
        "cpu_ms": round(process.process_cpu_us / 1000, 3),
        "charged_ms": round(process.charged_cpu_us / 1000, 3),
        "telemetry_ms": round(process.telemetry_cpu_us / 1000, 3),
        "unattributed_ms": round(unattributed_us / 1000, 3),
        "charged_share": round(process.charged_cpu_us / process.process_cpu_us, 4),
        "telemetry_share": round(process.telemetry_cpu_us / process.process_cpu_us, 4),
        "messages": messages,
        "cpu_ms_per_message": _ratio(process.process_cpu_us / 1000, messages or None),
        "unattributed_ms_per_message": _ratio(unattributed_us / 1000, messages or None),
    }


def _target_figures(samples: list[tuple[int, Cell]], messages: int,
                    seconds: int) -> dict[str, Any] | None:
    """A metered server's CPU and memory over a window, per message the sender had accepted
    in it, and what the meter itself cost (shown, never in the server's figures)."""
    process = Cell()
    peak = 0
    for _, cell in samples:
        process.merge(cell)
        peak = max(peak, cell.peak_rss_bytes)
    if not process.samples:
        return None
    return {
        "seconds": seconds,
        "samples": process.samples,
        "cpu_ms": round(process.process_cpu_us / 1000, 3),
        "messages": messages,
        "cpu_ms_per_message": _ratio(process.process_cpu_us / 1000, messages or None),
        "cores_mean": round(process.process_cpu_us / 1e6 / process.samples, 4),
        "limit_cores": round(process.limit_millicores / 1000 / process.samples, 3),
        "busy_seconds": process.busy_samples,
        "processes_mean": round(process.processes / process.samples, 1),
        "peak_memory_bytes": peak,
        "meter_cpu_ms": round(process.meter_cpu_us / 1000, 3),
    }


def _memory_figures(samples: list[tuple[int, Cell]]) -> dict[str, Any] | None:
    """The receivers' RSS against their open sessions, second by second: peak RSS and
    concurrency (the most open at once in any second, not only at its end), memory per
    concurrent session per mode, and the points for a plot."""
    measured = [(second, cell) for second, cell in samples if cell.samples and cell.rss_bytes]
    points = sorted((second, cell.rss_bytes // cell.samples, cell.open_plain // cell.samples,
                     cell.open_tls // cell.samples) for second, cell in measured)
    if not points:
        return None
    fit = MemorySamples()
    for _, rss, plain, tls in points:
        fit.add(rss, plain, tls)
    per_session = fit.fit()
    return {
        "peak_rss_bytes": max(rss for _, rss, _, _ in points),
        # A receiver of an older release reports no peaks: its end-of-second counts stand in.
        "peak_sessions": {PLAIN: max(max(cell.peak_plain, cell.open_plain // cell.samples)
                                     for _, cell in measured),
                          STARTTLS: max(max(cell.peak_tls, cell.open_tls // cell.samples)
                                        for _, cell in measured)},
        "bytes_per_session": {PLAIN: per_session["plain"], STARTTLS: per_session["tls"]},
        "points": [{"unix_s": second, "rss_bytes": rss, PLAIN: plain, STARTTLS: tls}
                   for second, rss, plain, tls in points],
    }


def _cost(modes: dict[str, Cell]) -> dict[str, Any]:
    """Plain vs STARTTLS for one role, with the TLS/plain factor of each figure."""
    plain = modes.get(PLAIN, Cell()).summary()
    tls_cell = modes.get(STARTTLS, Cell())
    tls = tls_cell.summary()
    factors = {}
    for figure in ("cpu_ms_per_message", "wire_bytes_in_per_message",
                   "wire_bytes_out_per_message"):
        if plain[figure] and tls[figure]:
            factors[figure] = round(tls[figure] / plain[figure], 3)
    if plain["duration_ms"]["p50"] and tls["duration_ms"]["p50"]:
        factors["duration_p50"] = round(tls["duration_ms"]["p50"] / plain["duration_ms"]["p50"], 3)
    out_vs_message = None
    if tls["wire_bytes_out_per_message"] and tls["message_bytes_per_message"]:
        out_vs_message = round(
            tls["wire_bytes_out_per_message"] / tls["message_bytes_per_message"], 3)
    return {PLAIN: plain, STARTTLS: tls, "factor": factors,
            "tls_out_bytes_per_message_over_message_bytes": out_vs_message}
