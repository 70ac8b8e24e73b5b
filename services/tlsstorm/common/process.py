"""Process CPU (user+sys) and RSS (now and at its peak), sampled so that cost per message can be
attributed; another process's CPU from the kernel's clock."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_LIBC = ctypes.CDLL(None, use_errno=True)


def cpu_seconds() -> float:
    """User+system CPU of this process (all threads), excluding children."""
    return time.process_time()


def cpu_seconds_of(pid: int) -> float:
    """User+system CPU of another process (every thread, ended ones too) from the kernel's
    per-process CPU clock, to the nanosecond (/proc/PID/stat counts 10 ms ticks)."""
    clock = ctypes.c_int()
    failed = _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock))  # an errno, not in errno
    if failed:
        raise OSError(failed, f"no CPU clock for process {pid}")
    return time.clock_gettime(clock.value)


def thread_cpu_seconds_of(pid: int, name: str) -> float:
    """CPU of another process's threads called `name` (live ones), from the scheduler's own
    count in nanoseconds (/proc/PID/task/TID/schedstat)."""
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            if (task / "comm").read_text().strip() == name:
                total_ns += int((task / "schedstat").read_text().split()[0])
    return total_ns / 1e9


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one (servers do): at the usual soft 1,024
    a flood of connections would fail in accept() instead of being answered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def peak_rss_bytes() -> int | None:
    """The kernel's high-water mark of this process's RSS (VmHWM), since start or the last
    reset_peak_rss()."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    # Not Linux, or not allowed: the peak then runs from the start.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@dataclass(frozen=True, slots=True)
class Sample:
    unix_s: float
    cpu_seconds: float
    rss_bytes: int


class ProcessSampler:
    """Keeps the last `keep` one-second samples of CPU and RSS; bounded memory."""

    def __init__(self, interval_s: float = 1.0, keep: int = 900) -> None:
        self.interval_s = interval_s
        self.samples: collections.deque[Sample] = collections.deque(maxlen=keep)
        self.started_unix_s = time.time()

    def sample(self) -> Sample:
        current = Sample(time.time(), cpu_seconds(), rss_bytes())
        self.samples.append(current)
        return current

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)
