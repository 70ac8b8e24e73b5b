"""A starved generator is named as what limited a wave, not mistaken for the receiver's latency
(issue 12): the sender, or Locust, runs in a CPU cgroup, as in a pod with the chart's limit, and
says so on its /v1/stats, in the sweep's wave and, through its spans, in the collector's
summary."""

from __future__ import annotations

import os
import time

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from tests import cgroups
from tests.locust_helpers import finish, locust, otel_env
from tests.receiver_process import ServiceProcess
from tlsstorm.common.telemetry import tracer_provider
from tlsstorm.sweep.run import SweepRunner, WavePoint

RATE, MESSAGES, TLS_RATIO = 150.0, 450, 0.7


def _otel_env(collector) -> dict[str, str]:
    """A sender process's export to the collector, quick enough for a wave's last second."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.http, "OTEL_BSP_SCHEDULE_DELAY": "200"}


def _wave_with_sender_limited_to(cores: float, receiver, collector
                                 ) -> tuple[dict, WavePoint, dict]:
    """The sender's CPU, the sweep's point and the sender's own status of the wave."""
    with cgroups.cpu_group(cores) as group:
        sender = ServiceProcess("sender", {
            "TLSSTORM_SENDER_TARGET": f"127.0.0.1:{receiver.smtp_port}",
            **_otel_env(collector)}, group.procs)
        try:
            with httpx.Client(timeout=30) as http:
                runner = SweepRunner(sender.http, receiver.http, http)
                point = runner.wave(TLS_RATIO, RATE, MESSAGES, f"sender at {cores} cores")
                time.sleep(1.5)  # the sender's last second of CPU, reported as a span
                wave = http.get(f"{sender.http}/v1/waves/{point.wave_id}").json()
                return sender.stats()["cpu"], point, wave
        finally:
            sender.stop()


def _collector_generators(collector, wave_id: str, service: str | None = None) -> dict:
    """The summary's generators once it has some (or `service`'s) CPU samples."""
    deadline = time.monotonic() + 15
    while True:
        summary = httpx.get(f"{collector.http}/v1/summary", params={"wave": wave_id}).json()
        generators = summary.get("generators") or {"services": []}
        names = {entry["service"] for entry in generators["services"]}
        if (service in names if service else names) or time.monotonic() > deadline:
            return generators
        time.sleep(0.3)


@pytest.mark.timeout(240)
def test_a_starved_sender_is_named_as_the_limit_and_a_fed_one_is_not(
    receiver, start_collector
):
    collector = start_collector()
    starved_cpu, starved, starved_wave = _wave_with_sender_limited_to(0.1, receiver, collector)

    assert starved_cpu["limit_source"].startswith("cgroup")
    assert starved_cpu["limit_cores"] == pytest.approx(0.1)
    assert starved.sender_cpu["throttled_periods"] > 0
    assert starved.generator_limited and starved.limited_by[0] == "sender"
    # The wave's own status says it too, tracing or not (issue 33).
    assert starved_wave["limited_by"] == ["sender"], starved_wave["sender_cpu"]
    assert starved_wave["sender_cpu"]["throttled_periods"] > 0
    assert starved_wave["limit"].startswith("sender 0.") and "of 0.1" in starved_wave["limit"]
    generators = _collector_generators(collector, starved.wave_id)
    assert generators["limited_by"] == ["tlsstorm-sender"], generators
    assert generators["services"][0]["limit_cores"] == pytest.approx(0.1)

    fed_cpu, fed, fed_wave = _wave_with_sender_limited_to(1.5, receiver, collector)

    assert fed_cpu["limit_cores"] == pytest.approx(1.5)
    assert not fed.generator_limited, fed.sender_cpu
    assert fed_wave["limited_by"] == [] and fed_wave["limit"] is None, fed_wave["sender_cpu"]
    assert fed.messages == MESSAGES
    generators = _collector_generators(collector, fed.wave_id)
    assert generators["services"] and generators["limited_by"] == [], generators


def _locust_wave(wave_id: str, receiver, sender, collector, cgroup_procs=None) -> None:
    """Headless Locust (--otel) sends 600 messages at 70% STARTTLS through the sender; with
    `cgroup_procs` it runs in that CPU cgroup, as a worker pod under its limit."""
    enter = (lambda: cgroup_procs.write_text(str(os.getpid()))) if cgroup_procs else None
    run = locust("SpamViaSender", "--headless", "--otel", "--users", "4", "--spawn-rate", "4",
                 "--max-messages", "600", "--tls-ratio", "0.7", "--wave-id", wave_id,
                 "--run-time", "60s", "--host", sender.http, "--only-summary",
                 env=otel_env(collector.http), preexec_fn=enter)
    output = finish(run, timeout=180)
    assert run.returncode == 0, output[-3000:]
    receiver.wait_sessions(600)
    receiver.service.provider.force_flush()
    time.sleep(1.5)  # the sender's last second of CPU, reported as a span


@pytest.mark.timeout(420)
def test_a_starved_locust_worker_is_named_as_the_limit_and_a_fed_one_is_not(
    start_collector, start_receiver
):
    """Locust's workers report their CPU against their limit as the sender does, so a worker
    out of CPU is named by the collector (issue 12: the generator is never the bottleneck)."""
    collector = start_collector()
    receiver = start_receiver(provider=tracer_provider(
        "tlsstorm-receiver", exporter=OTLPSpanExporter(endpoint=f"{collector.http}/v1/traces")))
    sender = ServiceProcess("sender", {"TLSSTORM_SENDER_TARGET": f"127.0.0.1:{receiver.smtp_port}",
                                       **_otel_env(collector)})
    try:
        with cgroups.cpu_group(0.15) as group:
            _locust_wave("locust-starved", receiver, sender, collector, group.procs)
        starved = _collector_generators(collector, "locust-starved", "locust")
        _locust_wave("locust-fed", receiver, sender, collector)
        fed = _collector_generators(collector, "locust-fed", "locust")
    finally:
        sender.stop()

    locust_starved = next(entry for entry in starved["services"] if entry["service"] == "locust")
    assert locust_starved["limit_cores"] == pytest.approx(0.15)
    assert locust_starved["throttled_ms"] > 0, starved
    assert starved["limited_by"] == ["locust"], starved
    locust_fed = next(entry for entry in fed["services"] if entry["service"] == "locust")
    assert locust_fed["seconds"] >= 1 and locust_fed["busy_seconds"] == 0, fed
    # Its greenlets run on one thread: one core, whatever the machine's affinity allows.
    assert locust_fed["limit_cores"] == 1.0, fed
    assert fed["limited_by"] == [], fed
