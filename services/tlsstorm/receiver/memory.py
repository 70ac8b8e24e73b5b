"""The receiver's memory: its budget, admission within it, and memory per concurrent session.

A STARTTLS session holds far more memory than a plain one (OpenSSL's state and buffers,
asyncio's TLS plumbing), so a wave of TLS spam can exhaust a server's memory before its CPU.
An MTA sheds such load rather than dying: Postfix caps its smtpd processes and leaves the rest
in the listen queue, or answers 421. The receiver reserves an estimate per open session and per
TLS session and checks its real RSS; what does not fit is refused and counted.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from pathlib import Path
from typing import Protocol

from tlsstorm.common.memory_fit import MemorySamples
from tlsstorm.common.process import peak_rss_bytes, reset_peak_rss, rss_bytes

_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number
_RSS_READ_EVERY_S = 0.05


def cgroup_memory_limit(proc_cgroup: Path = Path("/proc/self/cgroup"),
                        root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of this process's cgroup (v2 memory.max or v1
    memory.limit_in_bytes), or None without one."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2, the unified hierarchy
            candidates = [root / path.lstrip("/") / "memory.max", root / "memory.max"]
        elif "memory" in controllers.split(","):
            candidates = [root / "memory" / path.lstrip("/") / "memory.limit_in_bytes",
                          root / "memory" / "memory.limit_in_bytes"]
        else:
            continue
        for candidate in candidates:
            try:
                text = candidate.read_text().strip()
            except OSError:
                continue
            if text == "max" or int(text) >= _UNLIMITED:
                break
            return int(text)
    return None


def _malloc_trim():
    """glibc's malloc_trim, to hand freed session memory back to the kernel (or None)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class MemoryBudget:
    """Admits sessions and TLS upgrades while their estimated memory fits the budget and the
    process's real RSS leaves room for one more."""

    def __init__(self, limit_bytes: int, fraction: float, session_bytes: int,
                 tls_session_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.budget_bytes = int(limit_bytes * fraction)
        self.session_bytes = session_bytes
        self.tls_extra_bytes = max(0, tls_session_bytes - session_bytes)
        self.baseline_bytes = rss_bytes()
        self.reserved_bytes = 0
        self._rss = self.baseline_bytes
        self._rss_read_at = 0.0
        self._trimmed_at = 0.0
        self._trim = _malloc_trim()

    def _current_rss(self) -> int:
        now = time.monotonic()
        if now - self._rss_read_at > _RSS_READ_EVERY_S:
            self._rss, self._rss_read_at = rss_bytes(), now
        return self._rss

    def _fits(self, more: int) -> bool:
        if self.baseline_bytes + self.reserved_bytes + more > self.budget_bytes:
            return False
        if self._current_rss() + more <= self.budget_bytes:
            return True
        # Freed sessions' memory may sit in malloc's free lists: give it back, then look again.
        now = time.monotonic()
        if self._trim is not None and now - self._trimmed_at > 1.0:
            self._trimmed_at = now
            self._trim(0)
            self._rss, self._rss_read_at = rss_bytes(), now
            return self._rss + more <= self.budget_bytes
        return False

    def admit_session(self) -> bool:
        """A new connection, with room left for it to upgrade to TLS."""
        if not self._fits(self.session_bytes + self.tls_extra_bytes):
            return False
        self.reserved_bytes += self.session_bytes
        return True

    def admit_tls(self) -> bool:
        if not self._fits(self.tls_extra_bytes):
            return False
        self.reserved_bytes += self.tls_extra_bytes
        return True

    def release(self, tls: bool) -> None:
        self.reserved_bytes -= self.session_bytes + (self.tls_extra_bytes if tls else 0)

    def snapshot(self) -> dict[str, int]:
        return {"limit_bytes": self.limit_bytes, "budget_bytes": self.budget_bytes,
                "baseline_rss_bytes": self.baseline_bytes,
                "reserved_bytes": self.reserved_bytes,
                "session_estimate_bytes": self.session_bytes,
                "tls_session_estimate_bytes": self.session_bytes + self.tls_extra_bytes}


class OpenSessions(Protocol):
    """The sessions open and their peaks, as the receiver's SessionLimits counts them."""

    open_sessions: int
    open_tls_sessions: int
    peak_sessions: int
    peak_tls_sessions: int
    memory: MemoryBudget | None

    def reset_peaks(self) -> None: ...


class MemoryMonitor:
    """Memory as a cost: RSS against the sessions open per mode, four times a second, fitted
    into memory per concurrent session; the peaks; the budget in force."""

    def __init__(self, limits: OpenSessions) -> None:
        self.limits = limits
        self.samples = MemorySamples()

    def open_by_mode(self) -> dict[str, int]:
        limits = self.limits
        return {"plain": limits.open_sessions - limits.open_tls_sessions,
                "tls": limits.open_tls_sessions}

    async def run(self, interval_s: float = 0.25) -> None:
        while True:
            open_now = self.open_by_mode()
            self.samples.add(rss_bytes(), open_now["plain"], open_now["tls"])
            await asyncio.sleep(interval_s)

    def reset(self) -> None:
        self.samples.clear()
        self.limits.reset_peaks()
        reset_peak_rss()

    def snapshot(self) -> dict:
        limits = self.limits
        return {
            "rss_bytes": rss_bytes(),
            "peak_rss_bytes": peak_rss_bytes(),
            "open_sessions": self.open_by_mode(),
            "peak_sessions": {"all": limits.peak_sessions, "tls": limits.peak_tls_sessions},
            "bytes_per_session": self.samples.fit(),
            "samples": len(self.samples.samples),
            "budget": limits.memory.snapshot() if limits.memory else None,
        }
