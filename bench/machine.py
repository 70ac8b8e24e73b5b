"""The machine a benchmark ran on, printed beside every figure."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_note() -> str:
    return (f"{socket.gethostname()}: {os.cpu_count()} cores ({cpu_model()}), "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def process_cpu_seconds(pid: int) -> float:
    """CPU of a process (all its threads) so far, to the nanosecond where the kernel's
    scheduler statistics allow: /proc/PID/stat counts in clock ticks (10 ms), too coarse for a
    process that spends a few ms per run (each of Postfix's smtpd processes)."""
    tasks = Path(f"/proc/{pid}/task")
    if (tasks / str(pid) / "schedstat").exists():
        total_ns = 0
        for task in tasks.iterdir():
            try:
                total_ns += int((task / "schedstat").read_text().split()[0])
            except OSError:  # a thread that ended meanwhile
                continue
        return total_ns / 1e9
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
