"""The machine a benchmark or a sweep ran on, printed and saved beside every figure."""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess


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


def openssl_speed(seconds: int = 1) -> dict[str, float] | None:
    """Signatures per second of this machine's `openssl speed` (RSA-2048, ECDSA P-256): the
    yardstick to rescale handshake costs to another machine by its own `openssl speed`."""
    try:
        finished = subprocess.run(
            ["openssl", "speed", "-seconds", str(seconds), "rsa2048", "ecdsap256"],
            capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    speeds = {}
    for name, pattern in (("rsa2048_sign_per_s", r"^rsa 2048 bits .*?([\d.]+)\s+[\d.]+\s*$"),
                          ("ecdsa_p256_sign_per_s",
                           r"^\s*256 bits ecdsa \(nistp256\).*?([\d.]+)\s+[\d.]+\s*$")):
        match = re.search(pattern, finished.stdout, re.MULTILINE)
        if match:
            speeds[name] = float(match.group(1))
    return speeds or None


def machine_record() -> dict[str, object]:
    """What a saved result says about where it was measured."""
    return {"note": machine_note(), "cores": os.cpu_count(), "cpu": cpu_model(),
            "openssl_speed": openssl_speed()}
