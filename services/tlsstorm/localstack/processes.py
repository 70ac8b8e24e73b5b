"""The local stack: each service as a child process, started in order and stopped together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import tlsstorm

# The checkout the local stack runs from: its scripts, chart files and Locust files.
CHECKOUT = Path(tlsstorm.__file__).resolve().parents[2]


@dataclass
class Child:
    """One process of the stack: a command, and the URL that answers once it is ready: an
    http:// one with 200, an smtp://HOST:PORT one (a mail server) with its 220 greeting."""

    name: str
    command: list[str]
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None


def tlsstorm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tlsstorm", *args]


class Stack:
    """Starts children, waits for each /readyz, and stops all of them on exit."""

    def __init__(self, children: list[Child], ready_timeout_s: float = 60.0) -> None:
        self.children = children
        self.ready_timeout_s = ready_timeout_s

    def start(self) -> None:
        try:
            for child in self.children:
                env = {**os.environ, **child.env}
                child.process = subprocess.Popen(child.command, env=env, start_new_session=True)
                self._wait_ready(child)
        except BaseException:
            self.stop()
            raise

    def pid(self, name: str) -> int:
        """The process id of a started child, by name (benchmarks read its CPU from /proc)."""
        return next(child.process.pid for child in self.children
                    if child.name == name and child.process is not None)

    def _wait_ready(self, child: Child) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            code = child.process.poll()
            if code is not None:
                raise SystemExit(f"{child.name} exited with code {code} while starting")
            if _answers(child.ready_url):
                return
            time.sleep(0.1)
        raise SystemExit(f"{child.name} not ready at {child.ready_url} "
                         f"after {self.ready_timeout_s:.0f} s")

    def stop(self) -> None:
        """Last started first, each waited for: a service flushes to those it depends on."""
        for child in reversed(self.children):
            if child.process is None or child.process.poll() is not None:
                continue
            child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()

    def wait(self) -> None:
        """Block until Ctrl-C or SIGTERM, or until a child dies (its exit ends the stack)."""
        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        # Both, explicitly: started from a script in the background, a process inherits SIGINT
        # ignored, and Ctrl-C (or the tests' SIGINT) would then never reach it.
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        while not stopping:
            time.sleep(0.2)
            if stopping:  # Ctrl-C reaches the children too: their exit is no news then
                break
            for child in self.children:
                if child.process.poll() is not None:
                    print(f"{child.name} exited with code {child.process.returncode}",
                          file=sys.stderr)
                    return


def _answers(url: str) -> bool:
    if url.startswith("smtp://"):
        host, _, port = url.removeprefix("smtp://").rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0) as sock:
                sock.settimeout(2.0)
                return sock.recv(512).startswith(b"220")
        except OSError:
            return False
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
