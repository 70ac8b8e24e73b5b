"""The receiver's CPU figures against the kernel's account of its process.

The receiver runs as its own process; a client that is not our sender (stdlib smtplib, four
threads) sends pure plain and pure STARTTLS waves; the process's CPU over each wave (its POSIX
CPU clock, all threads, less an idle baseline of the same length) is the ground truth the
charged figures must cover.
"""

from __future__ import annotations

import concurrent.futures
import re
import ssl
import statistics
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.helpers import deliver
from tests.receiver_process import ReceiverProcess
from tlsstorm.common.process import cpu_seconds_of

SESSIONS = 500
BODY = b"Subject: spam\r\n\r\n" + (b"x" * 76 + b"\r\n") * 26  # about 2 KB
@dataclass
class Wave:
    sessions: int
    charged_ms: float  # per session, as /v1/stats gives it
    process_ms: float  # per session, the process's CPU over the wave less idle
    stats: dict

    @property
    def telemetry_ms(self) -> float:
        """Per session, what building and exporting spans cost over the wave (0, tracing
        off): in the process's CPU, in no session's."""
        return self.stats["process"]["cpu_seconds_telemetry"] * 1000 / self.sessions


class MeasuredReceiver(ReceiverProcess):
    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env)
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE

    def wait_for_export(self, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._spans_exported():  # seldom asked: each answer is in the process's CPU
            assert time.monotonic() < deadline, "spans not exported"
            time.sleep(0.25)

    def _spans_exported(self) -> bool:
        """No span ended but not yet exported (true at once with tracing off)."""
        metrics = httpx.get(f"{self.http}/metrics").text
        counts = dict(re.findall(r'^tlsstorm_spans_total\{outcome="(\w+)"\} (\S+)$', metrics,
                                 re.MULTILINE))
        return float(counts.get("exported", 0)) + float(counts.get("dropped", 0)) >= \
            float(counts.get("ended", 0))

    def send(self, tls: bool, count: int) -> None:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: deliver(self.smtp_port, tls=tls, context=self.context,
                                            body=BODY), range(count)))

    def wave(self, tls: bool, count: int = SESSIONS, idle_s: float = 2.0) -> Wave:
        """With `idle_s` 0, no idle baseline is taken (process_ms then includes idling)."""
        pid = self.process.pid
        before = cpu_seconds_of(pid)
        time.sleep(idle_s)
        idle_per_s = (cpu_seconds_of(pid) - before) / idle_s if idle_s else 0.0
        httpx.post(f"{self.http}/v1/stats/reset").raise_for_status()
        before, started = cpu_seconds_of(pid), time.monotonic()
        self.send(tls, count)
        mode = "tls" if tls else "plain"
        deadline = time.monotonic() + 10
        while (stats := httpx.get(f"{self.http}/v1/stats").json())[mode]["sessions"] < count:
            assert time.monotonic() < deadline, stats
            time.sleep(0.05)
        self.wait_for_export()  # the exporter's thread is part of the process
        spent = cpu_seconds_of(pid) - before - idle_per_s * (time.monotonic() - started)
        stats = httpx.get(f"{self.http}/v1/stats").json()  # with the export's cost in it
        return Wave(count, stats[mode]["session_cpu_seconds"] * 1000 / count,
                    spent * 1000 / count, stats)


@pytest.fixture
def receiver_process():
    started: list[MeasuredReceiver] = []

    def start(**env: str) -> MeasuredReceiver:
        receiver = MeasuredReceiver(env)
        started.append(receiver)
        # Warm-up: imports, first handshakes, and (tracing on) two batches of spans exported,
        # from which the receiver learns what exporting a span costs.
        for tls in (True, False, True):
            receiver.send(tls, 40)
            receiver.wait_for_export()
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.mark.parametrize("tracing", [False, True], ids=["tracing-off", "tracing-on"])
def test_charged_cpu_covers_the_process_and_keeps_its_tls_factor(
    receiver_process, start_collector, tracing
):
    env = {"OTEL_SDK_DISABLED": "true"}
    if tracing:
        collector = start_collector()
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.http, "OTEL_BSP_SCHEDULE_DELAY": "500"}
    receiver = receiver_process(**env)

    plain = receiver.wave(tls=False)
    tls = receiver.wave(tls=True)

    for wave in (plain, tls):
        # The process = sessions + telemetry + the rest, the first two nearly all of it.
        covered = wave.charged_ms + wave.telemetry_ms
        assert covered >= 0.9 * wave.process_ms, wave
        assert covered <= 1.05 * wave.process_ms, wave  # nothing counted twice
        assert (wave.telemetry_ms > 0.02 * wave.process_ms) is tracing, wave
        process = wave.stats["process"]
        assert process["cpu_seconds_charged"] == pytest.approx(
            wave.charged_ms * wave.sessions / 1000, abs=1e-3)
        assert process["cpu_seconds_telemetry"] == pytest.approx(
            sum(process["telemetry"].values()), abs=1e-5)
        assert process["cpu_seconds_unattributed"] == pytest.approx(
            process["cpu_seconds"] - process["cpu_seconds_charged"]
            - process["cpu_seconds_telemetry"], abs=1e-5)
    # The TLS/plain factor is the sessions', telemetry left out (it does not dilute it).
    charged_factor = tls.charged_ms / plain.charged_ms
    process_factor = (tls.process_ms - tls.telemetry_ms) / (plain.process_ms - plain.telemetry_ms)
    assert charged_factor == pytest.approx(process_factor, rel=0.10)
    # The handshake's CPU is a part of the session's, and less than its wall time.
    handshake = tls.stats["tls"]
    assert 0 < handshake["handshake_cpu_ms_mean"] < tls.charged_ms
    assert handshake["handshake_cpu_ms_mean"] < handshake["handshake_ms"]["p50"]
    if tracing:  # the collector sets the process's CPU (reported each second) beside it
        time.sleep(2.5)
        process = httpx.get(f"{collector.http}/v1/summary", params={"wave": ""}).json()[
            "process"]
        assert process["charged_share"] + process["telemetry_share"] >= 0.85, process
        assert process["telemetry_ms"] > 0, process
        assert process["cpu_ms"] <= cpu_seconds_of(receiver.process.pid) * 1000
        assert process["charged_ms"] >= (plain.charged_ms + tls.charged_ms) * SESSIONS * 0.99


def test_a_session_is_charged_the_same_with_tracing_on_and_off(receiver_process,
                                                               start_collector):
    """Telemetry is the telemetry account's: two receivers, one tracing and one not, take the
    same waves in turn, and their sessions are charged alike, within what one wave's figure
    varies (a tenth); tracing once added 16-31% to them. The tracing one's telemetry is what
    tracing costs.

    Compared wave by wave (a pair's two waves back to back, which one first alternating), the
    median of ten pairs: on a shared machine one wave in four can cost a third more or less than
    its neighbours, tracing on or off (the means of four rounds each, compared whole, were 11%
    apart in CI at stop 44)."""
    collector = start_collector()
    off = receiver_process(OTEL_SDK_DISABLED="true")
    on = receiver_process(OTEL_EXPORTER_OTLP_ENDPOINT=collector.http,
                          OTEL_BSP_SCHEDULE_DELAY="500")
    on_to_off: dict[bool, list[float]] = {False: [], True: []}  # charged per message, per pair
    telemetry: dict[bool, list[float]] = {False: [], True: []}
    for round_number in range(11):  # a warm-up (the first tracing wave costs ~20% more), ten
        order = (("off", off), ("on", on))[::-1 if round_number % 2 else 1]
        for tls in (False, True):
            pair = {name: receiver.wave(tls=tls, count=300, idle_s=0) for name, receiver in order}
            if round_number:
                on_to_off[tls].append(pair["on"].charged_ms / pair["off"].charged_ms)
                telemetry[tls].append(pair["on"].telemetry_ms / pair["on"].charged_ms)

    ratio = {tls: statistics.median(on_to_off[tls]) for tls in (False, True)}
    assert ratio[False] == pytest.approx(1, rel=0.10), on_to_off
    assert ratio[True] == pytest.approx(1, rel=0.10), on_to_off
    # The TLS/plain factor the same, tracing on and off.
    assert ratio[True] / ratio[False] == pytest.approx(1, rel=0.10), on_to_off
    # Tracing is not free, and its cost is in the account: 2-4% of the sessions' charge since
    # spans are recorded whole, encoded directly (stop 42; 13-21% before) and sent with
    # http.client (stop 44).
    assert min(telemetry[False] + telemetry[True]) > 0.01, telemetry


def test_filtering_work_and_queue_fsyncs_are_charged_to_the_sessions(receiver_process):
    bare = receiver_process(OTEL_SDK_DISABLED="true").wave(tls=False, count=300)
    working = receiver_process(OTEL_SDK_DISABLED="true", TLSSTORM_RECEIVER_QUEUE_FSYNC="true",
                               TLSSTORM_RECEIVER_PROCESSING_CPU_US="500").wave(
        tls=False, count=300)

    assert working.stats["plain"]["queue_fsyncs"] == 300
    assert bare.stats["plain"]["queue_fsyncs"] == 0
    # 0.5 ms of filtering per message, and the queue file's write and fsync in its thread.
    assert working.charged_ms >= bare.charged_ms + 0.5
    assert working.charged_ms >= 0.9 * working.process_ms, working
