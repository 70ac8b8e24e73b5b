"""The collector process: ingest, aggregation, periodic persistence and forwarding on one loop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import sqlite3
import sys
import time

from tlsstorm.collector.aggregate import Aggregator
from tlsstorm.collector.api import create_api
from tlsstorm.collector.forward import Forwarder
from tlsstorm.collector.store import Store
from tlsstorm.common.config import CollectorSettings
from tlsstorm.common.cpu_limit import CpuMonitor
from tlsstorm.common.serve import HttpServer, bind, port_of

# The aggregator's span counters that survive a restart with the cells.
_STORED_COUNTERS = ("spans_received", "spans_aggregated", "spans_rejected")


class CollectorService:
    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.cpu = CpuMonitor()
        self.aggregator = Aggregator(settings.retention_hours * 3600, settings.max_buckets)
        self.requests: collections.Counter[int] = collections.Counter()
        self.store = Store(settings.db_path)
        self.loaded = False
        self.forwarder: Forwarder | None = None
        self._http_sock = bind(settings.host, settings.http_port)
        self.http_port = port_of(self._http_sock)
        self._http = HttpServer(create_api(self), self._http_sock)
        self._flusher: asyncio.Task | None = None
        self._flushes_begun = self._flushes_committed = 0
        self._commits = asyncio.Condition()  # a flush committed: acknowledge what it holds
        self._flush_wanted = asyncio.Event()
        self.started_unix_s = time.time()

    def history(self) -> dict:
        """How far back the results go: across restarts on a volume, else since this start."""
        kept = not self.settings.ephemeral
        return {"kept_across_restarts": kept,
                "since_unix_s": None if kept else round(self.started_unix_s, 3)}

    def describe(self) -> str:
        settings = self.settings
        return (f"collector: OTLP/HTTP and report http://{settings.host}:{self.http_port}, "
                f"results in {settings.db_path}, forwarding to "
                f"{settings.forward_otlp_endpoint or 'nowhere'}")

    async def start(self) -> None:
        cells, counters = await asyncio.to_thread(self.store.load)
        self.aggregator.cells.update(cells)
        for name in _STORED_COUNTERS:
            setattr(self.aggregator, name, counters.get(name, 0))
        self.loaded = True
        if self.settings.forward_otlp_endpoint:
            self.forwarder = Forwarder(self.settings.forward_otlp_endpoint,
                                       self.settings.forward_queue, self.settings.forward_retries)
            self.forwarder.start()
        await self._http.start()
        self._flusher = asyncio.create_task(self._flush_forever())

    async def committed(self) -> None:
        """Returns once what was aggregated before the call is committed to SQLite: it asks
        for a flush at once (requests waiting meanwhile share it, one transaction)."""
        wanted = self._flushes_begun + 1
        self._flush_wanted.set()
        async with self._commits:
            await self._commits.wait_for(lambda: self._flushes_committed >= wanted)

    async def flush(self) -> None:
        """Write changed cells to SQLite (off the loop) and drop what retention says; a write
        that fails leaves its cells for the next one."""
        self._flushes_begun += 1
        flush = self._flushes_begun
        aggregator = self.aggregator
        dropped = aggregator.evict()
        changed = [(key, _dumps(aggregator.cells[key].to_json())) for key in aggregator.dirty]
        aggregator.dirty.clear()
        counters = {name: getattr(aggregator, name) for name in _STORED_COUNTERS}
        try:
            await asyncio.to_thread(self.store.save, changed, dropped, counters)
        except BaseException:
            aggregator.dirty.update(key for key, _ in changed if key in aggregator.cells)
            raise
        async with self._commits:
            self._flushes_committed = flush
            self._commits.notify_all()

    async def _flush_forever(self) -> None:
        """Every flush_interval_s, or at once when a request waits for its commit."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_wanted.wait(), self.settings.flush_interval_s)
            self._flush_wanted.clear()
            try:
                await self.flush()
            except (OSError, sqlite3.Error) as error:  # kept dirty: the next flush retries
                print(f"tlsstorm collector: cannot write {self.settings.db_path}: {error}; "
                      "requests wait until it can", file=sys.stderr, flush=True)
                await asyncio.sleep(self.settings.flush_interval_s)

    async def stop(self) -> None:
        await self._http.stop()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
        if self.forwarder is not None:
            await self.forwarder.stop()
        self.store.close()


def _dumps(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"))
