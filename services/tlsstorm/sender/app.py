"""The sender process: control API and SMTP client on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys

import httpx
from opentelemetry.sdk.trace import TracerProvider

from tlsstorm.common.config import SenderSettings
from tlsstorm.common.cpu_limit import CpuMonitor
from tlsstorm.common.process_report import report_every_second
from tlsstorm.common.serve import HttpServer, bind, port_of
from tlsstorm.sender.allowlist import Allowlist
from tlsstorm.sender.api import create_api
from tlsstorm.sender.client import SmtpClient
from tlsstorm.sender.spread import hand_over, other_replicas, parts_to_hand_over
from tlsstorm.sender.waves import WaveBook

HAND_OVER_S = 10.0  # past the drain delay, within the grace period's 60 s beyond the drain


class SenderService:
    def __init__(self, settings: SenderSettings, provider: TracerProvider | None = None):
        self.settings = settings
        self.cpu = CpuMonitor()
        # Which replica answered (behind a Service): the pod's name, and the process.
        self.instance = f"{socket.gethostname()}/{os.getpid()}"
        self.provider = provider
        self.allowlist = Allowlist(settings.allowed_targets, settings.target)
        # One client for the other replicas' APIs, kept: a new one per poll would build a TLS
        # context each time (tens of ms of CPU, on the loop that paces the wave).
        token = settings.api_token
        self.peers_http = httpx.AsyncClient(
            timeout=5.0, verify=False, headers={"Authorization": f"Bearer {token}"} if token
            else {}) if settings.peers else None
        self.client = SmtpClient(settings, provider)
        self.waves = WaveBook()
        self._http_sock = bind(settings.host, settings.http_port)
        self.http_port = port_of(self._http_sock)
        app = create_api(self)
        if provider is not None:
            from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

            # A server span for each request that sends (Locust's batches, a wave's start): the
            # trace's first hop. Not for the polls of a wave's status, stats, probes and
            # scrapes, nor the two ASGI spans per request: at a poll or two a second they were
            # the sender's largest telemetry cost beside its messages' spans (issue 33).
            FastAPIInstrumentor.instrument_app(
                app, tracer_provider=provider, exclude_spans=["receive", "send"],
                excluded_urls=r"healthz,readyz,metrics,v1/stats,v1/waves/[^/?]+(\?|$)")
        self._http = HttpServer(app, self._http_sock)
        self._process_task: asyncio.Task | None = None
        self.stopping = False  # SIGTERM: not ready, no new load

    def describe(self) -> str:
        engine = self.client.engine_choice
        return (f"sender: API http://{self.settings.host}:{self.http_port}, target "
                f"{self.settings.target}, allowed {', '.join(self.allowlist.entries)}; "
                f"{engine.name} engine: {engine.why}")

    async def start(self) -> None:
        await self._http.start()
        if self.provider is not None:  # the collector names a wave's limit from these
            self._process_task = asyncio.create_task(report_every_second(
                self.provider.get_tracer("tlsstorm.sender"), "sender", self.cpu.limit,
                telemetry=self.client.telemetry))

    async def stop(self) -> None:
        """Kubernetes' graceful termination: not ready and taking no new load at once, its
        waves stopped, the messages in flight ended (their results counted, their spans
        built); then for drain_delay_s its API still answers and each split wave's parts are
        handed to the other replicas; then the engine closes and the spans are flushed."""
        self.stopping = True
        self.waves.stop_all()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.waves.wait_all(), self.settings.drain_timeout_s)
        delay_ends = asyncio.get_running_loop().time() + self.settings.drain_delay_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hand_over_parts(delay_ends),
                                   self.settings.drain_delay_s + HAND_OVER_S)
        await asyncio.sleep(max(0.0, delay_ends - asyncio.get_running_loop().time()))
        if self._process_task is not None:
            self._process_task.cancel()
        await self._http.stop()
        self.client.close()
        if self.peers_http is not None:
            await self.peers_http.aclose()
        if self.provider is not None:
            self.provider.shutdown()

    async def _hand_over_parts(self, until: float) -> None:
        """The parts of each split wave it knows (its own and those read or handed to it) to
        the replicas the peers' names give: at once, then each second until `until` to any
        the names come to give (in a rollout the successor is ready before this replica is
        told to stop, but the chart's headless Service may name it seconds later). Only to
        replicas that answer now: a deleted pod's address would cost a connect timeout.
        What failed is said on stderr."""
        waves = [(wave, wave.others) for wave in self.waves.waves.values() if wave.stride > 1]
        waves += [(None, others) for others in self.waves.adopted.values()]
        if self.peers_http is None or not waves:
            return
        loop = asyncio.get_running_loop()
        handed: set[str] = set()
        while True:
            found = await other_replicas(self.peers_http, self.settings.peers, self.http_port,
                                         self.instance)
            if remotes := sorted(set(found) - handed):
                failed = await asyncio.gather(*(
                    hand_over(self.peers_http, others,
                              parts_to_hand_over(wave, others, self.instance), remotes)
                    for wave, others in waves))
                for (_, others), failures in zip(waves, failed, strict=True):
                    for failure in failures:
                        print(f"sender: wave {others.wave_id}: a part not handed over to "
                              f"{failure}", file=sys.stderr, flush=True)
                handed |= set(remotes)
            if loop.time() >= until:
                return
            await asyncio.sleep(min(1.0, until - loop.time()))
