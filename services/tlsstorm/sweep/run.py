"""Waves at each TLS ratio through a running sender, measured at the receiver."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from tlsstorm.common.auth import bearer_headers
from tlsstorm.common.cpu_limit import limited_by, usage_between
from tlsstorm.localstack.layout import LocalStack
from tlsstorm.localstack.wave_stats import receiver_wave_stats


@dataclass
class WavePoint:
    """What one wave cost the receiver."""

    tls_ratio: float
    rate: float
    attempted: int
    messages: int
    achieved_rate: float
    failed: int
    late: int
    skipped: int
    session_cpu_ms: float  # receiver CPU charged to the wave's sessions, in all
    cpu_ms_per_message: float  # the same, per message received
    process_cpu_ms_per_message: float  # receiver process CPU over the wave, idle work included
    plain_cpu_ms: float | None  # CPU charged to plain sessions, per message
    tls_cpu_ms: float | None  # CPU charged to STARTTLS sessions, per message
    handshake_p50_ms: float | None
    handshake_p95_ms: float | None
    handshake_p99_ms: float | None
    session_p99_ms: float | None
    plain_bytes_per_session: float | None
    tls_bytes_per_session: float | None
    tls_out_bytes_per_session: float | None
    plain_out_bytes_per_session: float | None
    peak_rss_mib: float | None  # the receiver's highest RSS during the wave
    peak_sessions: int  # sessions open at once at most, during the wave
    sender_cpu: dict[str, Any] | None  # the sender's CPU against its limit over the wave
    receiver_cpu: dict[str, Any] | None  # the receiver's, likewise
    limited_by: list[str]  # busy components (throttled or above 85%): "sender" first
    wave_id: str  # the sender's id of the wave, its label in spans and stats
    # Where the figures come from: "receiver" (its own accounting per session), or "meter" (a
    # server tlsstorm does not run: CPU and memory from its meter, all of its processes over
    # the wave; sessions, latency, bytes and outcomes from the sender's side).
    measured_by: str = "receiver"
    target: str = ""  # the server's address
    # A metered wave's CPU beyond the server's idle CPU over the same time, per message: what
    # the load cost it. Near zero when the meter watches processes the load never reaches.
    load_cpu_ms_per_message: float | None = None
    # Each mode's own session p99 (session_p99_ms is the slower of the two).
    plain_session_p99_ms: float | None = None
    tls_session_p99_ms: float | None = None

    @property
    def generator_limited(self) -> bool:
        return "sender" in self.limited_by

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def csv_row(self) -> dict[str, Any]:
        """One flat row: each side's CPU as cores, share of its limit and time throttled."""
        row = self.as_dict()
        for side in ("sender", "receiver"):
            used = row.pop(f"{side}_cpu") or {}
            for name in ("process_cores", "share_of_limit", "throttled_seconds"):
                row[f"{side}_{name}"] = used.get(name)
        row["limited_by"] = " ".join(self.limited_by)
        return row


def _per(total: float, count: int) -> float | None:
    return round(total / count, 3) if count else None


def _mib(value: int | None) -> float | None:
    return round(value / 2**20, 1) if value else None


def _progress(label: str, done: int, total: int) -> None:
    """A bar redrawn in place on a terminal; in a log, one line when the wave is done."""
    if not sys.stdout.isatty() and done < total:
        return
    width = 30
    filled = width * done // max(total, 1)
    end = "" if sys.stdout.isatty() else "\n"
    sys.stdout.write(f"\r  {label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
    sys.stdout.flush()


class SweepRunner:
    """Runs waves through the sender's /v1/waves and reads the receiver's per-wave stats."""

    def __init__(self, sender_url: str, receiver_url: str, http: httpx.Client,
                 size: int = 2048, concurrency: int = 64, stack: LocalStack | None = None) -> None:
        self.sender_url = sender_url
        self.receiver_url = receiver_url
        self.http = http
        self.stack = stack
        self.size = size
        self.concurrency = concurrency

    def _cpu_seconds(self) -> float:
        stats = self.http.get(f"{self.receiver_url}/v1/stats").json()
        return stats["process"]["cpu_seconds_total"]

    def wave(self, tls_ratio: float, rate: float, messages: int, label: str,
             **sender_options) -> WavePoint:
        """One wave; sender_options (per_connection, resume) go into its spec."""
        # The receiver's totals then count this wave alone: they stand in for the wave's own
        # stats when its sessions were refused before MAIL, so never carried its header.
        self.http.post(f"{self.receiver_url}/v1/stats/reset").raise_for_status()
        cpu_before = self._cpu_seconds()
        limits_before = self._cpu_limits()
        wave = self.send_wave(tls_ratio, rate, messages, label, **sender_options)
        limits = {name: usage_between(before, after) for (name, before), after in
                  zip(limits_before.items(), self._cpu_limits().values(), strict=True)}
        stats = self._wave_stats(wave)
        cpu = self._cpu_seconds() - cpu_before
        plain, tls = stats["plain"], stats["tls"]
        received = plain["messages"] + tls["messages"]
        session_cpu_ms = (plain["session_cpu_seconds"] + tls["session_cpu_seconds"]) * 1000
        return WavePoint(
            tls_ratio=tls_ratio, rate=rate, attempted=wave["total"], messages=received,
            session_cpu_ms=round(session_cpu_ms, 3),
            achieved_rate=wave["achieved_rate"] or 0.0,
            failed=wave["plain"]["failed"] + wave["tls"]["failed"], late=wave["late"],
            skipped=wave["skipped"],
            cpu_ms_per_message=round(session_cpu_ms / max(received, 1), 4),
            process_cpu_ms_per_message=round(cpu * 1000 / max(received, 1), 4),
            plain_cpu_ms=plain["cpu_ms_per_message"], tls_cpu_ms=tls["cpu_ms_per_message"],
            handshake_p50_ms=tls["handshake_ms"]["p50"],
            handshake_p95_ms=tls["handshake_ms"]["p95"],
            handshake_p99_ms=tls["handshake_ms"]["p99"],
            session_p99_ms=_p99(plain, tls),
            plain_session_p99_ms=plain["session_ms"]["p99"],
            tls_session_p99_ms=tls["session_ms"]["p99"],
            plain_bytes_per_session=_per(plain["wire_bytes_in"] + plain["wire_bytes_out"],
                                         plain["sessions"]),
            tls_bytes_per_session=_per(tls["wire_bytes_in"] + tls["wire_bytes_out"],
                                       tls["sessions"]),
            tls_out_bytes_per_session=_per(tls["wire_bytes_out"], tls["sessions"]),
            plain_out_bytes_per_session=_per(plain["wire_bytes_out"], plain["sessions"]),
            peak_rss_mib=_mib(stats["memory"]["peak_rss_bytes"]),
            peak_sessions=stats["memory"]["peak_sessions"]["all"],
            sender_cpu=limits["sender"], receiver_cpu=limits["receiver"],
            limited_by=limited_by(limits), wave_id=wave["id"],
        )

    def _cpu_limits(self) -> dict[str, dict]:
        """Each side's CPU counters against its limit, sender first."""
        return {"sender": self.http.get(f"{self.sender_url}/v1/stats").json()["cpu"],
                "receiver": self.http.get(f"{self.receiver_url}/v1/stats").json()["cpu"]}

    def send_wave(self, tls_ratio: float, rate: float, messages: int, label: str,
                  **sender_options) -> dict[str, Any]:
        """One wave through the sender, with a progress bar; the sender's account of it once
        done. sender_options (per_connection, resume, target) go into its spec."""
        response = self.http.post(f"{self.sender_url}/v1/waves", json={
            "rate": rate, "count": messages, "tls_ratio": tls_ratio,
            "concurrency": self.concurrency, "size": self.size, **sender_options})
        response.raise_for_status()
        wave_id = response.json()["id"]
        while True:
            wave = self.http.get(f"{self.sender_url}/v1/waves/{wave_id}").json()
            _progress(label, wave["done"], wave["total"])
            if wave["status"] != "running":
                break
            time.sleep(0.2)
        if sys.stdout.isatty():
            print()
        return wave

    def _wave_stats(self, wave: dict[str, Any]) -> dict[str, Any]:
        """The receiver's stats of the wave once every accepted message has arrived there."""
        expected = wave["plain"]["ok"] + wave["tls"]["ok"]
        if expected:
            stats = receiver_wave_stats(self.http, self.receiver_url, wave["id"], expected, 15)
            if stats is not None:
                return stats
        # Sessions refused before MAIL carry no wave header: then the receiver's totals (reset
        # before the wave) once each attempt's session has ended, without polling the API for
        # a wave id that will never come (its CPU would fall inside the wave's).
        sessions = math.ceil((wave["total"] - wave["skipped"]) / wave["spec"]["per_connection"])
        deadline = time.monotonic() + 15
        while True:
            totals = self.http.get(f"{self.receiver_url}/v1/stats").json()
            ended = totals["plain"]["sessions"] + totals["tls"]["sessions"]
            if ended >= sessions or time.monotonic() > deadline:
                return totals
            time.sleep(0.2)

    def capacity(self, tls_ratio: float, rates: list[float], seconds: float,
                 slo_p99_ms: float) -> tuple[Capacity, list[WavePoint]]:
        """The highest rate whose wave keeps session p99 under the SLO, nothing skipped, and
        the first rate that did not (if any was tried). A wave the sender could not drive
        (generator-limited) ends the steps without a verdict on the receiver."""
        sustained, steps = None, []
        for rate in rates:
            point = self.wave(tls_ratio, rate, max(1, int(rate * seconds)),
                              f"capacity {tls_ratio:.0%} TLS at {rate:g}/s")
            steps.append(point)
            if point.generator_limited:
                return Capacity(sustained, None, generator_limited_at=rate), steps
            within = (point.session_p99_ms or 0) <= slo_p99_ms and point.skipped == 0 \
                and point.failed == 0 and point.achieved_rate >= 0.9 * rate
            if not within:
                return Capacity(sustained, rate), steps
            sustained = rate
        return Capacity(sustained, None), steps


# A server's CPU per message that the load must at least cost, or the meter is not watching
# the processes that serve it (accepting a TCP connection alone costs more).
MIN_LOAD_CPU_MS = 0.02
# After a wave, a real MTA still hands its last messages on (Postfix's cleanup and qmgr).
SETTLE_S = 0.5


class TargetProblem(Exception):
    """The target cannot be measured as asked: the text says why, in one sentence."""


class MeteredRunner(SweepRunner):
    """Waves at a mail server tlsstorm does not run (Postfix, Exim, the user's own): its CPU
    and memory from the meter beside it (tlsstorm meter), over each wave; sessions, handshake
    latency, bytes and outcomes from the sender's side of each session."""

    def __init__(self, sender_url: str, meter_url: str, target: str, http: httpx.Client,
                 size: int = 2048, concurrency: int = 64, stack: LocalStack | None = None
                 ) -> None:
        super().__init__(sender_url, "", http, size, concurrency, stack)
        self.meter_url = meter_url.rstrip("/")
        self.target = target
        self.idle_cores = 0.0

    def _meter(self) -> dict[str, Any]:
        try:
            response = self.http.get(f"{self.meter_url}/v1/stats")
        except httpx.HTTPError as error:
            raise TargetProblem(f"the meter at {self.meter_url} does not answer ({error}): "
                                "run `tlsstorm meter` beside the server") from None
        stats = response.json()
        if stats.get("problem"):
            raise TargetProblem(f"the meter at {self.meter_url} measures nothing: "
                                f"{stats['problem']}")
        return stats

    def _cpu_seconds(self) -> float:
        return self._meter()["cpu_seconds_total"]

    def check(self, idle_s: float = 2.0) -> None:
        """Before any wave: the meter watches something, the target takes a plain and a
        STARTTLS message; then the server's idle CPU, to tell the load's cost from it."""
        stats = self._meter()
        if stats["target"] != self.target:
            print(f"note: the meter labels its figures {stats['target']}, the waves go to "
                  f"{self.target}")
        for tls in (False, True):
            response = self.http.post(f"{self.sender_url}/v1/send", json={
                "tls": tls, "target": self.target, "size": self.size})
            if response.status_code != 200:
                raise TargetProblem(f"the sender will not aim at {self.target}: "
                                    f"{response.json().get('detail', response.text)}")
            result = response.json()["results"][0]
            if result.get("tls_refused"):
                raise TargetProblem(f"{self.target} refuses STARTTLS ({result.get('reply')}): "
                                    "its TLS cost cannot be measured; enable STARTTLS there")
            if not result["ok"]:
                mode = "a STARTTLS" if tls else "a plain"
                raise TargetProblem(f"{self.target} did not take {mode} message: "
                                    f"{result.get('error') or result.get('reply')}")
        before, started = self._cpu_seconds(), time.monotonic()
        time.sleep(idle_s)
        self.idle_cores = max(0.0, (self._cpu_seconds() - before) / (time.monotonic() - started))

    def _cpu_limits(self) -> dict[str, dict]:
        """The sender's and the server's CPU against their limits."""
        return {"sender": self.http.get(f"{self.sender_url}/v1/stats").json()["cpu"],
                "target": self._meter()["cpu"]}

    def wave(self, tls_ratio: float, rate: float, messages: int, label: str,
             **sender_options) -> WavePoint:
        self.http.post(f"{self.meter_url}/v1/stats/reset").raise_for_status()
        before = self._meter()
        limits_before = self._cpu_limits()
        wave = self.send_wave(tls_ratio, rate, messages, label,
                              **{"target": self.target, **sender_options})
        time.sleep(SETTLE_S)
        after = self._meter()
        limits = {name: usage_between(before_cpu, after_cpu) if before_cpu and after_cpu
                  else None for (name, before_cpu), after_cpu
                  in zip(limits_before.items(), self._cpu_limits().values(), strict=True)}
        plain, tls = wave["plain"], wave["tls"]
        accepted = plain["ok"] + tls["ok"]
        cpu_ms = (after["cpu_seconds_total"] - before["cpu_seconds_total"]) * 1000
        window_s = wave["elapsed_s"] + SETTLE_S
        sessions = {mode: counters["ok"] + counters["failed"]
                    for mode, counters in (("plain", plain), ("tls", tls))}
        return WavePoint(
            tls_ratio=tls_ratio, rate=rate, attempted=wave["total"], messages=accepted,
            achieved_rate=wave["achieved_rate"] or 0.0,
            failed=plain["failed"] + tls["failed"], late=wave["late"], skipped=wave["skipped"],
            session_cpu_ms=round(cpu_ms, 3),
            cpu_ms_per_message=round(cpu_ms / max(accepted, 1), 4),
            process_cpu_ms_per_message=round(cpu_ms / max(accepted, 1), 4),
            plain_cpu_ms=None, tls_cpu_ms=None,
            handshake_p50_ms=tls["handshake_ms"]["p50"],
            handshake_p95_ms=tls["handshake_ms"]["p95"],
            handshake_p99_ms=tls["handshake_ms"]["p99"],
            session_p99_ms=_p99({"session_ms": plain["total_ms"]},
                                {"session_ms": tls["total_ms"]}),
            plain_session_p99_ms=plain["total_ms"]["p99"],
            tls_session_p99_ms=tls["total_ms"]["p99"],
            plain_bytes_per_session=_per(plain["bytes_sent"] + plain["bytes_received"],
                                         sessions["plain"]),
            tls_bytes_per_session=_per(tls["bytes_sent"] + tls["bytes_received"],
                                       sessions["tls"]),
            tls_out_bytes_per_session=_per(tls["bytes_received"], sessions["tls"]),
            plain_out_bytes_per_session=_per(plain["bytes_received"], sessions["plain"]),
            peak_rss_mib=_mib(after["peak_memory_bytes"]), peak_sessions=0,
            sender_cpu=limits["sender"], receiver_cpu=limits["target"],
            limited_by=limited_by(limits), wave_id=wave["id"], measured_by="meter",
            target=self.target,
            load_cpu_ms_per_message=round(
                (cpu_ms - self.idle_cores * window_s * 1000) / max(accepted, 1), 4),
        )


@dataclass(frozen=True)
class Capacity:
    """What the capacity steps found: the highest rate that held (`sustained`) and the first
    that failed. When none failed the capacity is only known to be at least `sustained`."""

    sustained: float | None
    failed_at: float | None
    generator_limited_at: float | None = None  # the rate the sender could not drive

    @property
    def lower_bound(self) -> bool:
        return self.failed_at is None

    def text(self) -> str:
        if self.generator_limited_at is not None:
            return f">={self.sustained:g}*" if self.sustained else "?*"
        if self.sustained is None:
            return f"<{self.failed_at:g}"
        if self.lower_bound:
            return f">={self.sustained:g}"
        return f"{self.sustained:g}-{self.failed_at:g}"

    def as_dict(self) -> dict[str, Any]:
        return {"sustained": self.sustained, "failed_at": self.failed_at,
                "lower_bound": self.lower_bound,
                "generator_limited_at": self.generator_limited_at}


def _p99(plain: dict[str, Any], tls: dict[str, Any]) -> float | None:
    values = [mode["session_ms"]["p99"] for mode in (plain, tls) if mode["session_ms"]["p99"]]
    return max(values) if values else None


@contextlib.contextmanager
def environment(overrides: dict[str, str]) -> Iterator[None]:
    """os.environ with `overrides` for the duration (child processes inherit it)."""
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def stack_runner(size: int = 2048, overrides: dict[str, str] | None = None,
                 label: str = "the local stack", tracing: bool = False,
                 target: str | None = None, meter_url: str | None = None
                 ) -> Iterator[SweepRunner]:
    """The local stack, by default with tracing off (no span is built, so CPU is the SMTP
    work's), started with `overrides` in its environment, and a runner aimed at it (or at
    `target`, measured by its meter: see LocalStack); all stops on exit."""
    with environment(overrides or {}):
        local = LocalStack(tracing=tracing, target=target, meter_url=meter_url)
        print(f"{label}: starting (target {local.target_name} at {local.target}) ...")
        local.stack.start()
    try:
        with httpx.Client(timeout=30, headers=bearer_headers()) as http:
            if local.target_name == "receiver":
                yield SweepRunner(local.sender_url(), local.receiver_url(), http, size=size,
                                  stack=local)
                return
            if local.meter_url is None:
                raise TargetProblem(f"{local.target}: a sweep needs the server's CPU; run "
                                    "`tlsstorm meter --target ... --pid-file ...` beside it "
                                    "and give its URL with --meter")
            runner = MeteredRunner(local.sender_url(), local.meter_url, local.target, http,
                                   size=size, stack=local)
            runner.check()
            yield runner
    finally:
        local.stack.stop()
