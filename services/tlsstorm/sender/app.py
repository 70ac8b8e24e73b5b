"""The sender process: control API and SMTP client on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import httpx
from opentelemetry.sdk.trace import TracerProvider

from tlsstorm.common.config import SenderSettings
from tlsstorm.common.cpu_limit import CpuMonitor
from tlsstorm.common.process_report import report_every_second
from tlsstorm.common.serve import HttpServer, bind, port_of
from tlsstorm.sender.allowlist import Allowlist
from tlsstorm.sender.api import create_api
from tlsstorm.sender.client import SmtpClient
from tlsstorm.sender.waves import WaveBook


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

            FastAPIInstrumentor.instrument_app(
                app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics"
            )
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
        built), then its API answers drain_delay_s more so whoever follows a wave reads its
        part's last figures; then the engine closes and the spans are flushed."""
        self.stopping = True
        self.waves.stop_all()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.waves.wait_all(), self.settings.drain_timeout_s)
        await asyncio.sleep(self.settings.drain_delay_s)
        if self._process_task is not None:
            self._process_task.cancel()
        await self._http.stop()
        self.client.close()
        if self.peers_http is not None:
            await self.peers_http.aclose()
        if self.provider is not None:
            self.provider.shutdown()
