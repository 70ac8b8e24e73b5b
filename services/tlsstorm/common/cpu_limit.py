"""This process's CPU against the limit it runs under, read from its own cgroup (v1 or v2).

A result is only the receiver's if no generator ran out of CPU first: each service says how much
of its limit it used and whether the kernel throttled it, so a wave can name what limited it.
Without a CPU limit the bound is the cores the process may run on (its affinity).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# A component above this share of its limit (or of the one core its event loop can use), or
# throttled at all, limited the wave (issue 12).
BUSY_SHARE = 0.85


@dataclass(frozen=True, slots=True)
class CpuReading:
    """Cumulative counters at one instant; two readings give the use over an interval."""

    monotonic_s: float
    process_cpu_s: float
    cgroup_cpu_s: float | None
    throttled_periods: int
    throttled_s: float


@dataclass(frozen=True, slots=True)
class CpuLimit:
    """Where the limit comes from and how many cores it allows."""

    cores: float  # the quota in cores, or the cores this process may use
    source: str  # "cgroup v2 cpu.max", "cgroup v1 cpu.cfs_quota_us" or "cpu affinity"
    cgroup: Path | None
    # One event loop (tlsstorm's services) is busy past BUSY_SHARE of one core, whatever the
    # limit; a server of many processes (an MTA) only past that share of its limit.
    one_loop: bool = True

    def reading(self, process_cpu_s: float | None = None) -> CpuReading:
        """Now; `process_cpu_s`: the CPU of what is measured, if not this process's."""
        usage, periods, throttled = _cgroup_counters(self.cgroup)
        return CpuReading(time.monotonic(), time.process_time() if process_cpu_s is None
                          else process_cpu_s, usage, periods, throttled)

    def usage(self, before: CpuReading, after: CpuReading) -> dict[str, object]:
        """Use between two readings: cores, share of the limit, throttling, busy or not."""
        elapsed = max(after.monotonic_s - before.monotonic_s, 1e-9)
        process_cores = (after.process_cpu_s - before.process_cpu_s) / elapsed
        cgroup_cores = None
        if after.cgroup_cpu_s is not None and before.cgroup_cpu_s is not None:
            cgroup_cores = (after.cgroup_cpu_s - before.cgroup_cpu_s) / elapsed
        # Under a quota the whole cgroup (the container) spends it; without one, the bound is
        # this process's cores, and the cgroup may be the whole machine's.
        quota = self.source.startswith("cgroup")
        used = max(process_cores, cgroup_cores or 0.0) if quota else process_cores
        throttled_periods = after.throttled_periods - before.throttled_periods
        share = used / self.cores if self.cores else None
        return {
            "limit_cores": round(self.cores, 3), "limit_source": self.source,
            "seconds": round(elapsed, 3), "process_cores": round(process_cores, 3),
            "cgroup_cores": None if cgroup_cores is None else round(cgroup_cores, 3),
            "share_of_limit": None if share is None else round(share, 3),
            "throttled_periods": throttled_periods,
            "throttled_seconds": round(after.throttled_s - before.throttled_s, 3),
            # One Python event loop runs on one core whatever the limit allows.
            "busy": bool(throttled_periods or (share is not None and share > BUSY_SHARE)
                         or (self.one_loop and process_cores > BUSY_SHARE)),
            "one_loop": self.one_loop,
        }


def cpu_limit(pid: int | str = "self") -> CpuLimit:
    """The limit a process (this one by default) runs under: its cgroup's quota, or else the
    cores it may run on."""
    affinity = float(len(os.sched_getaffinity(0 if pid == "self" else int(pid))))
    folder, source = _own_cgroup_v2(pid), "cgroup v2 cpu.max"
    quota = _tightest(folder, CGROUP_ROOT, _v2_cores) if folder is not None else None
    if folder is None:  # cgroup v1 (or none at all)
        folder, source, root = _own_cgroup_v1(pid), "cgroup v1 cpu.cfs_quota_us", _v1_root()
        quota = _tightest(folder, root, _v1_cores) if folder is not None else None
    if quota is None:
        return CpuLimit(affinity, "cpu affinity", folder)
    return CpuLimit(min(quota, affinity), source, folder)


def _own_cgroup_lines(pid: int | str) -> list[tuple[str, str]]:
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        lines.append((controllers, path))
    return lines


def _located(mount: Path, path: str) -> Path | None:
    """The cgroup's folder: by its path, or the mount itself inside a container's namespace."""
    for folder in (mount / path.lstrip("/"), mount):
        if folder.is_dir():
            return folder
    return None


def _own_cgroup_v2(pid: int | str) -> Path | None:
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        return None
    for controllers, path in _own_cgroup_lines(pid):
        if controllers == "":
            return _located(CGROUP_ROOT, path)
    return None


def own_cgroup_folder() -> Path | None:
    """This process's cgroup folder holding its CPU count (v2, or v1's cpuacct), as seen from
    inside a container too (where the mount is the container's own cgroup)."""
    folder = _own_cgroup_v2("self")
    if folder is not None:
        return folder
    for name in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
        for controllers, path in _own_cgroup_lines("self"):
            if "cpuacct" in controllers.split(",") and (CGROUP_ROOT / name).is_dir():
                return _located(CGROUP_ROOT / name, path)
    return None


def _v1_root() -> Path | None:
    """Where cgroup v1's cpu controller is mounted (alone, or with cpuacct)."""
    return next((CGROUP_ROOT / name for name in ("cpu,cpuacct", "cpu")
                 if (CGROUP_ROOT / name).is_dir()), None)


def _own_cgroup_v1(pid: int | str) -> Path | None:
    root = _v1_root()
    for controllers, path in _own_cgroup_lines(pid):
        if root is not None and "cpu" in controllers.split(","):
            return _located(root, path)
    return None


def _tightest(folder: Path, root: Path, cores_of) -> float | None:
    """The tightest quota from this cgroup up to the hierarchy's root (a parent's binds too)."""
    tightest = None
    while folder.is_relative_to(root):
        cores = cores_of(folder)
        if cores is not None:
            tightest = cores if tightest is None else min(tightest, cores)
        if folder == root:
            break
        folder = folder.parent
    return tightest


def _v2_cores(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_cores(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 else None


def _cgroup_counters(folder: Path | None) -> tuple[float | None, int, float]:
    """(CPU seconds used by the cgroup, throttled periods, throttled seconds)."""
    if folder is None:
        return None, 0, 0.0
    stat = _key_values(folder / "cpu.stat")
    if "usage_usec" in stat:  # v2
        return (stat["usage_usec"] / 1e6, stat.get("nr_throttled", 0),
                stat.get("throttled_usec", 0) / 1e6)
    return (cgroup_cpu_seconds(folder), stat.get("nr_throttled", 0),
            stat.get("throttled_time", 0) / 1e9)


def cgroup_cpu_seconds(folder: Path) -> float | None:
    """The CPU every process of a cgroup used, ended ones too: v2's cpu.stat, v1's
    cpuacct.usage (in the folder, or the same cgroup in the cpuacct hierarchy)."""
    stat = _key_values(folder / "cpu.stat")
    if "usage_usec" in stat:
        return stat["usage_usec"] / 1e6
    for accounting in (folder, _v1_cpuacct_of(folder)):
        try:
            return int((accounting / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError):
            continue
    return None


def _v1_cpuacct_of(folder: Path) -> Path:
    """The same cgroup in the cpuacct hierarchy, where cpu and cpuacct are mounted apart."""
    root = _v1_root()
    if root is not None and folder.is_relative_to(root):
        return CGROUP_ROOT / "cpuacct" / folder.relative_to(root)
    return folder


def _key_values(path: Path) -> dict[str, int]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


class CpuMonitor:
    """The limit, the cumulative counters for anyone to diff, and the recent use: from the
    previous look (at least `interval_s` before) to now, so no task has to sample it."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.limit = cpu_limit()
        self.interval_s = interval_s
        self._then = self.limit.reading()
        self._recent: dict[str, object] | None = None

    def recent(self, now: CpuReading | None = None) -> dict[str, object] | None:
        """The use from the previous look to `now` (a reading the caller already took)."""
        now = now or self.limit.reading()
        if now.monotonic_s - self._then.monotonic_s >= self.interval_s:
            self._recent = self.limit.usage(self._then, now)
            self._then = now
        return self._recent

    def snapshot(self) -> dict[str, object]:
        now = self.limit.reading()
        return {"limit_cores": round(self.limit.cores, 3), "limit_source": self.limit.source,
                "counters": asdict(now), "recent": self.recent(now)}


def limited_by(usage: dict[str, dict | None]) -> list[str]:
    """The components (by name) that were busy over an interval: generators first."""
    return [name for name, used in usage.items() if used is not None and used["busy"]]


def usage_sentence(name: str, used: dict) -> str:
    throttled = (f", throttled {used['throttled_seconds']:g} s in "
                 f"{used['throttled_periods']} periods" if used["throttled_periods"] else "")
    return (f"{name} {used['process_cores']:.2f} cores of {used['limit_cores']:g} "
            f"({used['limit_source']}){throttled}")


def usage_between(before: dict, after: dict) -> dict[str, object]:
    """A service's CPU use between two of its snapshots (`cpu` on its /v1/stats)."""
    limit = CpuLimit(float(after["limit_cores"]), str(after["limit_source"]), None,
                     bool(after.get("one_loop", True)))
    return limit.usage(CpuReading(**before["counters"]), CpuReading(**after["counters"]))
