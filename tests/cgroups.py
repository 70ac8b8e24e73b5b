"""A memory cgroup of its own for a process under test (as root; cgroup v1 or v2), as a pod's
limit would hold it."""

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


def unavailable() -> str | None:
    """Why a memory cgroup cannot be made here, or None."""
    if os.geteuid() != 0:
        return "creating cgroups needs root"
    base = ROOT if _v2() else ROOT / "memory"
    if not os.access(base, os.W_OK):
        return f"{base} is not writable"
    return None


def require() -> None:
    """Skip where cgroups cannot be made, except under CI=true, where that is a failure."""
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"memory cgroup tests must run in CI: {reason}")
    pytest.skip(reason)


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
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # it ended meanwhile
                ((self.path.parent) / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()


@contextlib.contextmanager
def memory_group(limit_bytes: int) -> Iterator[MemoryGroup]:
    require()
    group = MemoryGroup(limit_bytes)
    try:
        yield group
    finally:
        group.remove()
