"""Serving a FastAPI app with uvicorn inside a service's own event loop, on a pre-bound socket."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from typing import Protocol

import uvicorn

# Connections the kernel queues before the service accepts them. asyncio's create_server listens
# again with its own default (100) unless given this: a burst of clients then overflowed the
# queue and waited seconds for the kernel's SYN-ACK retries.
LISTEN_BACKLOG = 1024


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one (tests read it back)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be named: asyncio sets TCP_NODELAY only on sockets whose proto is TCP, and
    # accepted sockets inherit it; without it each multi-line reply waits on a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SystemExit(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """One uvicorn server running as a task in the current loop."""

    def __init__(self, app, sock: socket.socket) -> None:
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = _EmbeddedServer(config)
        self._sock = sock
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def describe(self) -> str: ...


async def run_until_signalled(service: Service) -> None:
    """Start the service, say where it listens, and stop it cleanly on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await service.start()
    print(service.describe(), flush=True)
    waits = {asyncio.create_task(stop.wait())}
    ended = getattr(service, "ended", None)  # a service may end by itself (a meter's server)
    if ended is not None:
        waits.add(asyncio.create_task(ended.wait()))
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await service.stop()


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: request bodies over `max_bytes` get 413, whatever Content-Length says."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = (f'{{"detail":"request body exceeds {self.max_bytes} bytes"}}').encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
