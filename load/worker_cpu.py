"""Each Locust worker's CPU against its limit, once a second, as a tlsstorm.process span (role
locust-worker) when Locust runs with --otel: the collector then names a worker that ran out of
CPU as what limited a wave, as it names a sender (issue 12)."""

from __future__ import annotations

import dataclasses

import gevent
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from tlsstorm.common.cpu_limit import CpuLimit, cpu_limit
from tlsstorm.common.process_report import ProcessReporter

ROLE = "locust-worker"


def one_core_at_most(limit: CpuLimit) -> CpuLimit:
    """A Locust process runs its users as greenlets on one thread: it can use one core, whatever
    its cgroup or affinity allows (so the report and the demo say "of 1")."""
    if limit.cores <= 1:
        return limit
    return dataclasses.replace(limit, cores=1.0, source="one process")


@events.init.add_listener
def start_cpu_reports(environment: Environment, **_kwargs) -> None:
    """Workers and a standalone Locust send load; the master only coordinates."""
    if isinstance(environment.runner, MasterRunner):
        return
    if not isinstance(trace.get_tracer_provider(), TracerProvider):  # no --otel
        return
    reporter = ProcessReporter(trace.get_tracer("tlsstorm.locust"), ROLE,
                               one_core_at_most(cpu_limit()))

    def every_second() -> None:
        while True:
            gevent.sleep(1.0)
            reporter.report()

    gevent.spawn(every_second)
    # The last part of a second, or a whole run shorter than one, counts too.
    events.quitting.add_listener(lambda **_kwargs: reporter.report())
