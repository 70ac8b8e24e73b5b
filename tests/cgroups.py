"""A memory or CPU cgroup of its own for a process under test (as root; cgroup v1 or v2), as a
pod's limits would hold it."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path("/sys/fs/cgroup")


def _v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


def _base(controller: str) -> Path:
    return ROOT if _v2() else ROOT / controller


def unavailable(controller: str = "memory") -> str | None:
    """Why a cgroup of that controller cannot be made here, or None."""
    if os.geteuid() != 0:
        return "creating cgroups needs root"
    base = _base(controller)
    if not os.access(base, os.W_OK):
        return f"{base} is not writable"
    return None


def require(controller: str = "memory") -> None:
    """Skip where cgroups cannot be made, except under CI=true, where that is a failure."""
    reason = unavailable(controller)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{controller} cgroup tests must run in CI: {reason}")
    pytest.skip(reason)


def _remove(path: Path) -> None:
    """Its processes back to the parent group, then the group itself."""
    for pid in (path / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):  # it ended meanwhile
            (path.parent / "cgroup.procs").write_text(pid)
    with contextlib.suppress(OSError):
        path.rmdir()


class MemoryGroup:
    def __init__(self, limit_bytes: int) -> None:
        self.path = (ROOT if _v2() else ROOT / "memory") / f"tlsstorm-test-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        if _v2():
            (self.path / "memory.max").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):  # no swap for it either, where swap exists
                (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def oom_kills(self) -> int:
        name = "memory.events" if _v2() else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        _remove(self.path)


@contextlib.contextmanager
def memory_group(limit_bytes: int) -> Iterator[MemoryGroup]:
    require()
    group = MemoryGroup(limit_bytes)
    try:
        yield group
    finally:
        group.remove()


class AccountingGroup:
    """A cgroup without limits, for the kernel's own count of its processes' CPU (cpuacct in
    v1, cpu.stat in v2), ended ones included: the ground truth beside a meter's reading."""

    def __init__(self) -> None:
        self.path = _base("cpuacct") / f"tlsstorm-test-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def cpu_seconds(self) -> float:
        if _v2():
            stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        _remove(self.path)


@contextlib.contextmanager
def accounting_group() -> Iterator[AccountingGroup]:
    require("cpuacct" if not _v2() else "cpu")
    group = AccountingGroup()
    try:
        yield group
    finally:
        group.remove()


class CpuGroup:
    """A CPU quota in cores (CFS bandwidth: `cores` x 100 ms of CPU per 100 ms period)."""

    PERIOD_US = 100_000

    def __init__(self, cores: float) -> None:
        self.path = _base("cpu") / f"tlsstorm-test-{uuid.uuid4().hex[:8]}"
        if _v2():
            with contextlib.suppress(OSError):  # the cpu controller for the root's children
                (ROOT / "cgroup.subtree_control").write_text("+cpu")
        self.path.mkdir()
        quota = int(cores * self.PERIOD_US)
        if _v2():
            (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def remove(self) -> None:
        _remove(self.path)


@contextlib.contextmanager
def cpu_group(cores: float) -> Iterator[CpuGroup]:
    require("cpu")
    group = CpuGroup(cores)
    try:
        yield group
    finally:
        group.remove()
