"""The receiver process: SMTP listener and HTTP API on one event loop."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import sys
import tempfile
import weakref
from pathlib import Path

from tlsstorm.common import attributes as attr
from tlsstorm.common.config import ReceiverSettings
from tlsstorm.common.cpu_limit import CpuMonitor
from tlsstorm.common.pki import server_certificate
from tlsstorm.common.process import (
    ProcessSampler,
    raise_open_files_limit,
    rss_bytes,
)
from tlsstorm.common.process_report import report_every_second
from tlsstorm.common.serve import LISTEN_BACKLOG, HttpServer, bind, port_of
from tlsstorm.common.telemetry import CountedTracerProvider, span_counts_of
from tlsstorm.common.tls import server_context, timed
from tlsstorm.receiver.api import create_api
from tlsstorm.receiver.cpu_meter import CpuAccount, LoopMeter
from tlsstorm.receiver.gate import GateCounts, GatePolicy
from tlsstorm.receiver.handler import SinkHandler
from tlsstorm.receiver.limits import SessionLimits
from tlsstorm.receiver.memory import MemoryBudget, MemoryMonitor, cgroup_memory_limit
from tlsstorm.receiver.session import SessionRecord
from tlsstorm.receiver.smtp import MeasuredSMTP
from tlsstorm.receiver.stats import ReceiverStats
from tlsstorm.receiver.tracing import emit_session_spans


class ReceiverService:
    """Owns the listeners, the TLS context (built once) and the stats."""

    def __init__(self, settings: ReceiverSettings,
                 provider: CountedTracerProvider | None = None):
        self.settings = settings
        self.provider = provider
        self.telemetry = span_counts_of(provider)  # what building and exporting spans cost
        self.stats = ReceiverStats(self.telemetry)
        self.sampler = ProcessSampler()
        self.cpu = CpuMonitor()
        try:
            self.certificate = server_certificate(settings)
            self.key_type = str(self.certificate.describe()[0]["key_type"])
            self.tls_context: ssl.SSLContext = timed(server_context(
                self.certificate.served, settings.tls_min_version, settings.tls_max_version,
                settings.session_tickets,
            ))
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            given = [str(path) for path in (settings.cert_file, settings.key_file,
                                            settings.ca_cert_file, settings.ca_key_file) if path]
            print(f"tlsstorm receiver: cannot serve TLS with {', '.join(given)}: {error}",
                  file=sys.stderr)
            raise SystemExit(2) from None
        self.chain_summary = self.certificate.summary()
        self._tracer = provider.get_tracer("tlsstorm.receiver") if provider else None
        self._session_spans = provider.recorder("tlsstorm.receiver") if provider else None
        self.limits = SessionLimits(
            settings.max_connections, settings.max_handshakes, settings.max_recipients,
            refuse_starttls_from=tuple(settings.refuse_starttls_from),
            reject_from=tuple(settings.reject_from))
        self.gate = GatePolicy(settings.gate_mode, frozenset(settings.gate_deny),
                               frozenset(settings.gate_allow), settings.gate_require_sni,
                               settings.gate_deny_below_tls13)
        self.gate_counts = GateCounts()
        if self.gate.active:
            self.limits.gate = self.gate
        self.memory = MemoryMonitor(self.limits)
        memory_limit = settings.memory_limit_bytes or cgroup_memory_limit()
        if memory_limit:
            self.limits.memory = MemoryBudget(
                memory_limit, settings.memory_budget_fraction,
                settings.session_memory_kib * 1024, settings.tls_session_memory_kib * 1024)
        queue_dir = None
        if settings.queue_fsync:
            queue_dir = Path(tempfile.mkdtemp(prefix="tlsstorm-queue-"))
        self._handler = SinkHandler(settings.processing_cpu_us, queue_dir)
        self._smtp_sock = bind(settings.host, settings.smtp_port)
        self._http_sock = bind(settings.host, settings.http_port)
        self.smtp_port = port_of(self._smtp_sock)
        self.http_port = port_of(self._http_sock)
        self._smtp_server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[MeasuredSMTP] = weakref.WeakSet()
        self.stopping = False  # not ready: a Service sends no new connection
        self._http = HttpServer(create_api(self), self._http_sock)
        self._sampler_task: asyncio.Task | None = None
        self.cpu_meter: LoopMeter | None = None
        self.charged_ns_total = 0  # every session's CPU, as sealed
        self._charged_reported_ns = 0  # ... up to the last tlsstorm.process span
        self._process_task: asyncio.Task | None = None
        self._memory_task: asyncio.Task | None = None

    def describe(self) -> str:
        host = self.settings.host
        return (f"receiver: SMTP {host}:{self.smtp_port} (STARTTLS, "
                f"{self.certificate.source}: {self.chain_summary}), "
                f"API http://{host}:{self.http_port}")

    @property
    def accepting(self) -> bool:
        return (self._smtp_server is not None and self._smtp_server.is_serving()
                and not self.stopping)

    def _session_ended(self, record: SessionRecord, account: CpuAccount | None) -> None:
        """Count the session and seal its CPU (everything up to here, its counting, its share
        of accepting), then build its spans: their CPU (and exporting them, later, in the
        exporter's thread) is the telemetry account's, never the session's, so a session costs
        the same with tracing on or off."""
        self.stats.add(record)
        if account is not None and self.cpu_meter is not None:
            record.cpu_ns = account.charged_ns() + self.cpu_meter.accept_share_ns()
            account.sealed = True
        self.stats.charge(record)
        self.charged_ns_total += record.cpu_ns
        if self._session_spans is not None:
            with self.telemetry.building() as built:
                self._session_spans.defer(emit_session_spans, record, self.settings.hostname,
                                          self.smtp_port, self.chain_summary)
            if self.cpu_meter is not None:
                self.cpu_meter.set_aside(built.ns)
        self.gate_counts.add(record)

    def _new_session(self) -> MeasuredSMTP:
        settings = self.settings
        session = MeasuredSMTP(
            self._handler,
            on_session_end=self._session_ended,
            handshake_timeout_s=settings.handshake_timeout_s,
            data_timeout_s=settings.data_timeout_s,
            cpu_account=self.cpu_meter.open_account() if self.cpu_meter else None,
            limits=self.limits,
            hostname=settings.hostname,
            ident="tlsstorm",
            tls_context=self.tls_context,
            require_starttls=settings.require_starttls,
            timeout=settings.idle_timeout_s,
            data_size_limit=settings.max_message_bytes,
            loop=asyncio.get_running_loop(),
        )
        self._sessions.add(session)
        return session

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        raise_open_files_limit()
        if self.settings.session_cpu:
            self.cpu_meter = LoopMeter(loop)
            self.cpu_meter.install()
            self.stats.meter = self.cpu_meter
            self.stats.reset()
        self._smtp_server = await loop.create_server(self._new_session, sock=self._smtp_sock,
                                                     backlog=LISTEN_BACKLOG)
        await self._http.start()
        self._sampler_task = asyncio.create_task(self.sampler.run())
        self._memory_task = asyncio.create_task(self.memory.run())
        if self._tracer is not None:
            self._charged_reported_ns = self.charged_ns_total
            self._process_task = asyncio.create_task(report_every_second(
                self._tracer, "receiver", self.cpu.limit, self._process_attributes,
                telemetry=self.telemetry))

    def reset_stats(self) -> None:
        self.stats.reset()
        self.memory.reset()
        self.gate_counts = GateCounts()

    def _process_attributes(self) -> dict[str, int]:
        """What sessions sealed in the second just ended were charged (so the collector can
        say what share of the process its figures cover), RSS and open sessions at its end,
        and the most sessions open at once in it."""
        charged_now = self.charged_ns_total
        charged_us = (charged_now - self._charged_reported_ns) // 1000
        self._charged_reported_ns = charged_now
        open_now = self.memory.open_by_mode()
        peaks = self.limits.take_interval_peaks()
        return {attr.PROCESS_CHARGED_US: charged_us, attr.PROCESS_RSS_BYTES: rss_bytes(),
                attr.OPEN_PLAIN_SESSIONS: open_now["plain"],
                attr.OPEN_TLS_SESSIONS: open_now["tls"],
                attr.PEAK_PLAIN_SESSIONS: peaks["plain"], attr.PEAK_TLS_SESSIONS: peaks["tls"]}

    async def _drain(self) -> None:
        """Kubernetes' graceful termination, as an MTA stops: not ready at once (a Service
        sends no new connection), still serving for drain_delay_s while that spreads, then no
        new connection or transaction (421), and open transactions finished within
        drain_timeout_s; a connection still open then is cut, counted. Every session ended
        here is counted and traced before the spans are flushed."""
        if self._smtp_server is None:
            return
        self.stopping = True
        await asyncio.sleep(self.settings.drain_delay_s)
        self._smtp_server.close()
        self.limits.draining = True
        for session in list(self._sessions):
            session.shut_down()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout_s
        while self._open_sessions() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in self._open_sessions():
            session.cut()
        while self._open_sessions() and loop.time() < deadline + 1:
            await asyncio.sleep(0.01)  # the cut connections' ends arrive
        await asyncio.sleep(0)  # each ended session's report (scheduled by its end) runs

    def _open_sessions(self) -> list[MeasuredSMTP]:
        return [session for session in self._sessions if session.is_open]

    async def stop(self) -> None:
        await self._drain()
        for task in (self._sampler_task, self._process_task, self._memory_task):
            if task is not None:
                task.cancel()
        await self._http.stop()
        if self._smtp_server is not None:
            self._smtp_server.close()
        self._handler.close()
        if self._handler.queue_dir is not None:
            shutil.rmtree(self._handler.queue_dir, ignore_errors=True)
        if self.provider is not None:
            self.provider.shutdown()
        if self.cpu_meter is not None:
            self.cpu_meter.uninstall()
