"""The server a meter runs itself, in a container they share (`tlsstorm meter --cgroup self --
COMMAND`): there the container's cgroup is the only complete count of the server's CPU (a
sidecar sees no other container's cgroup, and Exim's deliveries are in no process's count).
The meter starts it, passes it the container's stop signal, ends when it ends, with its status,
and reaps what it orphans, as the container's first process must."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess


class Supervised:
    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.process: subprocess.Popen | None = None
        self.ended = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command)
        self._task = asyncio.create_task(self._watch())

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    async def _watch(self) -> None:
        while self.process.poll() is None:
            self._reap_orphans()
            await asyncio.sleep(0.2)
        self.ended.set()

    def _reap_orphans(self) -> None:
        """Every ended child but the server itself (whose status its Popen reads)."""
        while True:
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if found is None or found.si_pid == self.process.pid:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(found.si_pid, 0)

    async def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s` (the pod's grace period is longer)."""
        if self._task is not None:
            self._task.cancel()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.process.wait), grace_s)
        except TimeoutError:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
