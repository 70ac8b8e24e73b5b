"""A starved sender is named as what limited a wave, not mistaken for the receiver's latency
(issue 12): the sender runs in a CPU cgroup, as in a pod with the chart's limit, and says so on
its /v1/stats, in the sweep's wave and, through its spans, in the collector's summary."""

from __future__ import annotations

import time

import httpx
import pytest

from tests import cgroups
from tests.receiver_process import ServiceProcess
from tlsstorm.sweep.run import SweepRunner, WavePoint

RATE, MESSAGES, TLS_RATIO = 150.0, 450, 0.7


def _wave_with_sender_limited_to(cores: float, receiver, collector) -> tuple[dict, WavePoint]:
    with cgroups.cpu_group(cores) as group:
        sender = ServiceProcess("sender", {
            "TLSSTORM_SENDER_TARGET": f"127.0.0.1:{receiver.smtp_port}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.http, "OTEL_BSP_SCHEDULE_DELAY": "200"},
            group.procs)
        try:
            with httpx.Client(timeout=30) as http:
                runner = SweepRunner(sender.http, receiver.http, http)
                point = runner.wave(TLS_RATIO, RATE, MESSAGES, f"sender at {cores} cores")
                time.sleep(1.5)  # the sender's last second of CPU, reported as a span
                return sender.stats()["cpu"], point
        finally:
            sender.stop()


def _collector_generators(collector, wave_id: str) -> dict:
    deadline = time.monotonic() + 15
    while True:
        summary = httpx.get(f"{collector.http}/v1/summary", params={"wave": wave_id}).json()
        generators = summary.get("generators") or {"services": []}
        if generators["services"] or time.monotonic() > deadline:
            return generators
        time.sleep(0.3)


@pytest.mark.timeout(240)
def test_a_starved_sender_is_named_as_the_limit_and_a_fed_one_is_not(
    receiver, start_collector
):
    collector = start_collector()
    starved_cpu, starved = _wave_with_sender_limited_to(0.1, receiver, collector)

    assert starved_cpu["limit_source"].startswith("cgroup")
    assert starved_cpu["limit_cores"] == pytest.approx(0.1)
    assert starved.sender_cpu["throttled_periods"] > 0
    assert starved.generator_limited and starved.limited_by[0] == "sender"
    generators = _collector_generators(collector, starved.wave_id)
    assert generators["limited_by"] == ["tlsstorm-sender"], generators
    assert generators["services"][0]["limit_cores"] == pytest.approx(0.1)

    fed_cpu, fed = _wave_with_sender_limited_to(1.5, receiver, collector)

    assert fed_cpu["limit_cores"] == pytest.approx(1.5)
    assert not fed.generator_limited, fed.sender_cpu
    assert fed.messages == MESSAGES
    generators = _collector_generators(collector, fed.wave_id)
    assert generators["services"] and generators["limited_by"] == [], generators
