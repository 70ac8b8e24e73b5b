"""What a meter watches: a mail server's processes, named the way an operator knows them (a
cgroup, the tree under a pid or pid file, or processes by name), and their CPU and memory as the
kernel counts them.

CPU is cumulative and covers processes that come and go. In a cgroup the kernel keeps the count
(`cpuacct.usage`, `cpu.stat`). In a process tree it is each live process's own CPU clock plus
what it collected from the children it reaped (cutime and cstime): an smtpd that Postfix's
master reaped is in the master's count, an Exim child that its daemon reaped in the daemon's. A
root that goes away (reaped by nobody watched) keeps its last count. Memory is the proportional
set size (PSS) summed over the live processes, so pages they share count once."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from tlsstorm.common.cpu_limit import (
    CGROUP_ROOT,
    CpuLimit,
    cgroup_cpu_seconds,
    cpu_limit,
    own_cgroup_folder,
)
from tlsstorm.common.process import cpu_seconds_of

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Reading:
    monotonic_s: float
    cpu_seconds: float  # cumulative, of everything covered since watching began
    memory_bytes: int  # PSS of the live processes
    processes: int  # live processes covered now


@dataclass(frozen=True, slots=True)
class _Process:
    parent: int
    name: str
    reaped_s: float  # CPU of the children it has reaped (cutime + cstime)
    own_ticks_s: float  # its own CPU in clock ticks (utime + stime), where its clock is not ours


_NOBODY = _Process(0, "", 0.0, 0.0)


def _process(pid: int) -> _Process | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return _Process(int(fields[1]), name, (int(fields[13]) + int(fields[14])) / _TICKS,
                    (int(fields[11]) + int(fields[12])) / _TICKS)


def _processes() -> dict[int, _Process]:
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (found := _process(int(entry.name))) is not None:
            table[int(entry.name)] = found
    return table


def _own_cpu_seconds(pid: int, process: _Process) -> float | None:
    """Its CPU clock, to the nanosecond; its ticks where the clock may not be read (another
    user's process, seen from a sidecar); None once it has gone."""
    try:
        return cpu_seconds_of(pid)
    except PermissionError:
        return process.own_ticks_s
    except OSError:
        return None


def memory_of(pid: int) -> int:
    """PSS in bytes (RSS where smaps_rollup cannot be read); 0 for a process gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        return 0


class ProcessTree:
    """The processes under some roots: a given pid, the pid in a pid file (read again each time,
    so a restarted server is followed), or every process with one of some names whose parent
    does not have one of them."""

    def __init__(self, *, pid: int | None = None, pid_file: Path | None = None,
                 names: list[str] | None = None) -> None:
        if sum(given is not None and given != [] for given in (pid, pid_file, names)) != 1:
            raise ValueError("watch one of: a pid, a pid file, process names")
        self._pid, self._pid_file, self._names = pid, pid_file, frozenset(names or ())
        self.description = (f"the process tree under pid {pid}" if pid is not None else
                            f"the process tree under the pid in {pid_file}" if pid_file else
                            f"processes named {', '.join(sorted(self._names))} and their "
                            "children")
        self._last: dict[int, tuple[int, float]] = {}  # pid -> (parent, CPU counted)
        self._departed_s = 0.0
        self.seen: set[int] = set()
        # Watched processes that ignore SIGCHLD: the kernel reaps their children without
        # adding their CPU to anyone's count (Exim's reception processes do, for deliveries).
        self._ignoring: set[int] = set()  # live ones
        self.ignoring_seen: dict[str, set[int]] = {}  # by name, every one seen (pids, bounded)

    def _roots(self, table: dict[int, _Process]) -> list[int]:
        if self._pid is not None:
            return [self._pid] if self._pid in table else []
        if self._pid_file is not None:
            try:
                pid = int(self._pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return []
            return [pid] if pid in table else []
        return [pid for pid, process in table.items() if process.name in self._names and
                table.get(process.parent, _NOBODY).name not in self._names]

    @property
    def gap(self) -> str | None:
        """What the count misses, if anything."""
        if not self.ignoring_seen:
            return None
        names = ", ".join(f"{len(pids):,} {name}" for name, pids in
                          sorted(self.ignoring_seen.items()))
        return (f"processes that ignore SIGCHLD ({names} seen): the kernel reaps their "
                "children without counting their CPU, so what those children use after their "
                "last reading is missed; watch the server's cgroup (--cgroup, "
                "--cgroup-of-pid-file) for a complete count")

    def limit(self) -> CpuLimit | None:
        """What the server may use: its first root's cgroup quota, or the cores it may run
        on; None while no root runs."""
        roots = self._roots(_processes())
        return _limit_of(roots[0]) if roots else None

    def covered(self) -> tuple[dict[int, _Process], list[int]]:
        table = _processes()
        children: dict[int, list[int]] = {}
        for pid, process in table.items():
            children.setdefault(process.parent, []).append(pid)
        found, stack = [], self._roots(table)
        while stack:
            pid = stack.pop()
            found.append(pid)
            stack.extend(children.get(pid, ()))
        return table, found

    def read(self) -> Reading:
        table, pids = self.covered()
        now: dict[int, tuple[int, float]] = {}
        memory = 0
        for pid in pids:
            own = _own_cpu_seconds(pid, table[pid])
            if own is None:  # gone between the listing and now: its parent reaps it
                continue
            now[pid] = (table[pid].parent, own + table[pid].reaped_s)
            memory += memory_of(pid)
        for pid, (parent, counted) in self._last.items():
            # Gone: in its parent's count once reaped, if the parent is watched and reaps
            # with accounting; else kept as last read.
            if pid not in now and (parent not in now or parent in self._ignoring):
                self._departed_s += counted
        self._ignoring = {pid for pid in now if _ignores_children(pid)}
        for pid in self._ignoring:
            pids = self.ignoring_seen.setdefault(table[pid].name, set())
            if len(pids) < 10_000:
                pids.add(pid)
        self._last = now
        self.seen.update(now)
        cpu = self._departed_s + sum(counted for _, counted in now.values())
        return Reading(time.monotonic(), cpu, memory, len(now))


_SIGCHLD_BIT = 1 << (17 - 1)


def _ignores_children(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) & _SIGCHLD_BIT)
    except OSError:
        pass
    return False


class Cgroup:
    """Every process in one cgroup, named as /proc/PID/cgroup names it (e.g.
    /system.slice/postfix.service, /docker/ID), or the cgroup of the process whose pid is in
    a file (a container's first process): the kernel's own count of their CPU, complete."""

    gap = None

    def __init__(self, path: str | None = None, pid_file: Path | None = None) -> None:
        self.seen: set[int] = set()
        self._pid_file = pid_file
        # "self": the meter's own cgroup (a container it shares with the server it runs):
        # the meter's own CPU is taken off.
        self.own = path == "self"
        if pid_file is not None:
            path = _cgroup_of(int(pid_file.read_text().split()[0]))
        self.path = path
        if self.own:
            folder = own_cgroup_folder()
            if folder is None:
                raise ValueError("this process's cgroup has no CPU count to read")
            self.folder = folder
        else:
            self.folder = _cgroup_folder(path)
        self.description = (
            f"its own cgroup ({self.folder}), less the meter's CPU" if self.own else
            f"cgroup {path} ({self.folder})" + (f", of the process in {pid_file}"
                                                 if pid_file else ""))

    def limit(self) -> CpuLimit | None:
        try:
            first = (self.folder / "cgroup.procs").read_text().split()[0]
        except (OSError, IndexError):
            return None
        return _limit_of(int(first))

    def read(self) -> Reading:
        cpu = cgroup_cpu_seconds(self.folder)
        if cpu is None:
            raise OSError(f"cannot read the CPU of cgroup {self.path} at {self.folder}")
        try:
            pids = [int(line) for line in (self.folder / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        if self.own:
            cpu -= time.process_time()
            pids = [pid for pid in pids if pid != os.getpid()]
        self.seen.update(pids)
        return Reading(time.monotonic(), cpu, sum(memory_of(pid) for pid in pids), len(pids))


def _limit_of(pid: int) -> CpuLimit | None:
    try:
        found = cpu_limit(pid)
    except OSError:  # gone meanwhile
        return None
    return CpuLimit(found.cores, found.source, found.cgroup, one_loop=False)


def _cgroup_of(pid: int) -> str:
    """The cgroup holding a process's CPU count, as /proc/PID/cgroup names it."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controllers == "" and (CGROUP_ROOT / "cgroup.controllers").exists()) or \
                "cpuacct" in controllers.split(","):
            return path
    raise ValueError(f"process {pid} is in no cgroup with a CPU count")


def _cgroup_folder(path: str) -> Path:
    """The folder holding the cgroup's CPU count: cgroup v2's unified tree, or v1's cpuacct."""
    relative = path.strip("/")
    candidates = [CGROUP_ROOT / relative] if (CGROUP_ROOT / "cgroup.controllers").exists() else [
        CGROUP_ROOT / name / relative for name in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu")]
    for folder in candidates:
        if cgroup_cpu_seconds(folder) is not None:
            return folder
    raise ValueError(f"no cgroup {path} with a CPU count under {CGROUP_ROOT} "
                     f"(looked in {', '.join(map(str, candidates))})")
