"""The machine a benchmark ran on, printed beside every figure."""

from __future__ import annotations

import os
import platform
import socket

from tlsstorm.common.process import cpu_seconds_of


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
    """CPU of a process (all its threads, ended ones too) to the nanosecond: /proc/PID/stat
    counts in clock ticks (10 ms), too coarse for a process that spends a few ms per run (each
    of Postfix's smtpd processes)."""
    return cpu_seconds_of(pid)
