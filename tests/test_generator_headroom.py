"""A starved sender is named as what limited a wave, not mistaken for the receiver's latency
(issue 12): the sender runs in a CPU cgroup, as in a pod with the chart's limit."""

from __future__ import annotations

import httpx
import pytest

from tests import cgroups
from tests.receiver_process import ServiceProcess
from tlsstorm.sweep.run import SweepRunner

RATE, MESSAGES, TLS_RATIO = 150.0, 450, 0.7


def _wave_with_sender_limited_to(cores: float, receiver) -> tuple[dict, object]:
    with cgroups.cpu_group(cores) as group:
        sender = ServiceProcess("sender", {
            "TLSSTORM_SENDER_TARGET": f"127.0.0.1:{receiver.smtp_port}",
            "OTEL_SDK_DISABLED": "true"}, group.procs)
        try:
            with httpx.Client(timeout=30) as http:
                runner = SweepRunner(sender.http, receiver.http, http)
                point = runner.wave(TLS_RATIO, RATE, MESSAGES, f"sender at {cores} cores")
                return sender.stats()["cpu"], point
        finally:
            sender.stop()


@pytest.mark.timeout(180)
def test_a_starved_sender_is_named_as_the_limit_and_a_fed_one_is_not(receiver):
    starved_cpu, starved = _wave_with_sender_limited_to(0.1, receiver)

    assert starved_cpu["limit_source"].startswith("cgroup")
    assert starved_cpu["limit_cores"] == pytest.approx(0.1)
    assert starved.sender_cpu["throttled_periods"] > 0
    assert starved.generator_limited and starved.limited_by[0] == "sender"

    fed_cpu, fed = _wave_with_sender_limited_to(1.5, receiver)

    assert fed_cpu["limit_cores"] == pytest.approx(1.5)
    assert not fed.generator_limited, fed.sender_cpu
    assert fed.messages == MESSAGES
