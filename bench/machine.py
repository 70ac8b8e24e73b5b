"""The machine a benchmark ran on, printed beside every figure."""

from __future__ import annotations

import os
import platform
import socket


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
