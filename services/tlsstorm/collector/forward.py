"""Forwards accepted OTLP batches unchanged (to Jaeger), never making ingest wait."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

_RETRYABLE = {429, 502, 503, 504}


def traces_url(endpoint: str) -> str:
    """OTLP's rule: a base endpoint gets /v1/traces appended; a full one is kept."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


class Forwarder:
    """A bounded queue and one worker with retries; every batch ends forwarded or dropped."""

    def __init__(self, endpoint: str, queue_size: int, retries: int,
                 timeout_s: float = 5.0, backoff_s: float = 0.2) -> None:
        self.url = traces_url(endpoint)
        self.retries = retries
        self.backoff_s = backoff_s
        self.queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue(queue_size)
        self.forwarded = 0
        self.dropped = 0
        self.retried = 0
        self._client = httpx.AsyncClient(timeout=timeout_s)
        self._worker: asyncio.Task | None = None

    def offer(self, body: bytes, headers: dict[str, str]) -> None:
        try:
            self.queue.put_nowait((body, headers))
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run())

    async def stop(self, drain_s: float = 2.0) -> None:
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), drain_s)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self.dropped += self.queue.qsize()
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            body, headers = await self.queue.get()
            try:
                if await self._send(body, headers):
                    self.forwarded += 1
                else:
                    self.dropped += 1
            finally:
                self.queue.task_done()

    async def _send(self, body: bytes, headers: dict[str, str]) -> bool:
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = await self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError:
                continue
            if response.status_code < 300:
                return True
            if response.status_code not in _RETRYABLE:
                return False
        return False
