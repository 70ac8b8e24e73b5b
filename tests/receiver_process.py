"""A service as a process of its own, as it runs in a pod: its CPU and memory are the
kernel's account of that process alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.locust_helpers import free_port


def process_rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ServiceProcess:
    """`tlsstorm <service>` on free loopback ports; with `cgroup_procs`, it enters that cgroup
    before it starts (so it reads its limits the way it would in a pod)."""

    def __init__(self, service: str, env: dict[str, str], cgroup_procs: Path | None = None
                 ) -> None:
        port_variable = f"TLSSTORM_{service.upper()}_HTTP_PORT"
        http_port = int(env.get(port_variable) or free_port())
        self.http = f"http://127.0.0.1:{http_port}"
        command = [sys.executable, "-m", "tlsstorm", service]
        if cgroup_procs is not None:
            command = ["sh", "-c", f'echo $$ > {cgroup_procs} && exec "$@"', "sh", *command]
        self.process = subprocess.Popen(
            command, env={**os.environ, port_variable: str(http_port), **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.http}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, self.process.stderr.read()
            assert time.monotonic() < deadline, f"{service} not ready"
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> dict:
        return httpx.get(f"{self.http}/v1/stats", timeout=10).json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class ReceiverProcess(ServiceProcess):
    """The receiver on a free SMTP port too."""

    def __init__(self, env: dict[str, str], cgroup_procs: Path | None = None) -> None:
        self.smtp_port = free_port()
        super().__init__("receiver", {"TLSSTORM_RECEIVER_SMTP_PORT": str(self.smtp_port),
                                      **env}, cgroup_procs)
