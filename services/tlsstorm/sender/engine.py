"""The compiled SMTP engine (engine/, Go) as the sender's child process.

Why: per message the Python client cost more than half of what the receiver it measures
spends (issue 12), most of it the client's half of the TLS handshake through OpenSSL and
Python's work per command. The sender still decides what to send, builds the messages and
records results and spans; the engine only holds the connections. One JSON job per line goes
to its stdin, one JSON result per line comes back when the connection is over.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
from pathlib import Path

_REPO_TOOLS = Path(__file__).resolve().parents[3] / ".tools" / "bin"
ENGINE_NAME = "tlsstorm-engine"


def find_engine(configured: str) -> str | None:
    """`auto`: the engine binary on PATH or in the checkout's .tools/bin, else none (the
    Python client); `python`: none; anything else: that path, which must exist."""
    if configured == "python":
        return None
    if configured != "auto":
        if not os.access(configured, os.X_OK):
            raise FileNotFoundError(f"the SMTP engine {configured} is not an executable file")
        return configured
    found = shutil.which(ENGINE_NAME)
    if found:
        return found
    built = _REPO_TOOLS / ENGINE_NAME
    return str(built) if os.access(built, os.X_OK) else None


class EngineGone(Exception):
    """The engine process ended; the connections it held have no result."""


class Engine:
    """One engine process; `run(job)` resolves with that connection's result."""

    def __init__(self, path: str, ca_file: Path | None) -> None:
        self.path = path
        self.ca_file = ca_file
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._waiting: dict[int, asyncio.Future[dict]] = {}
        self._ids = itertools.count(1)
        self._starting = asyncio.Lock()

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        async with self._starting:
            if self._process is None or self._process.returncode is not None:
                args = [self.path] + (["--ca-file", str(self.ca_file)] if self.ca_file else [])
                self._process = await asyncio.create_subprocess_exec(
                    *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    limit=64 << 20)
                self._reader = asyncio.create_task(self._read(self._process))
            return self._process

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        while line := await process.stdout.readline():
            result = json.loads(line)
            waiting = self._waiting.pop(result["id"], None)
            if waiting is not None and not waiting.done():
                waiting.set_result(result)
        code = await process.wait()
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(EngineGone(f"the SMTP engine exited with {code}"))
        self._waiting.clear()

    async def run(self, job: dict) -> dict:
        process = await self._ensure_started()
        job_id = job["id"] = next(self._ids)
        result = self._waiting[job_id] = asyncio.get_running_loop().create_future()
        process.stdin.write(json.dumps(job, separators=(",", ":")).encode() + b"\n")
        try:
            return await result
        finally:
            self._waiting.pop(job_id, None)

    async def close(self) -> None:
        if self._process is None or self._process.returncode is not None:
            return
        self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 5)
        except TimeoutError:
            self._process.kill()
        if self._reader is not None:
            await self._reader

    def pids(self) -> list[int]:
        """The engine's process, whose CPU is the sender's too."""
        running = self._process is not None and self._process.returncode is None
        return [self._process.pid] if running else []
