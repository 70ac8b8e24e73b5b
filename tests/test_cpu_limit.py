"""Reading a CPU limit from the cgroup files as a pod sees them, v2 and v1 (this machine has one
of the two for real: tests/test_generator_headroom.py makes a real group on it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tlsstorm.common import cpu_limit


@pytest.fixture
def cgroup_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(cpu_limit, "CGROUP_ROOT", tmp_path)
    return tmp_path


def test_v2_quota_usage_and_throttling_from_cpu_max_and_cpu_stat(cgroup_root, monkeypatch):
    (cgroup_root / "cgroup.controllers").write_text("cpu memory\n")
    pod = cgroup_root / "kubepods" / "pod1"
    pod.mkdir(parents=True)
    (cgroup_root / "kubepods" / "cpu.max").write_text("max 100000\n")
    (pod / "cpu.max").write_text("50000 100000\n")
    (pod / "cpu.stat").write_text("usage_usec 2000000\nnr_periods 40\nnr_throttled 3\n"
                                  "throttled_usec 150000\n")
    monkeypatch.setattr(cpu_limit, "_own_cgroup_lines", lambda pid: [("", "/kubepods/pod1")])

    limit = cpu_limit.cpu_limit()
    before = limit.reading()
    (pod / "cpu.stat").write_text("usage_usec 2450000\nnr_periods 50\nnr_throttled 5\n"
                                  "throttled_usec 250000\n")
    after = limit.reading()

    assert (limit.cores, limit.source) == (0.5, "cgroup v2 cpu.max")
    assert after.cgroup_cpu_s - before.cgroup_cpu_s == pytest.approx(0.45)
    used = limit.usage(before, after)
    assert used["throttled_periods"] == 2 and used["throttled_seconds"] == pytest.approx(0.1)
    assert used["busy"] is True  # throttled at all


def test_v1_quota_from_cfs_files_and_usage_from_a_separate_cpuacct_mount(cgroup_root,
                                                                         monkeypatch):
    cpu, cpuacct = cgroup_root / "cpu" / "pod2", cgroup_root / "cpuacct" / "pod2"
    cpu.mkdir(parents=True)
    cpuacct.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("150000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (cpu / "cpu.stat").write_text("nr_periods 9\nnr_throttled 0\nthrottled_time 0\n")
    (cpuacct / "cpuacct.usage").write_text("3000000000\n")
    monkeypatch.setattr(cpu_limit, "_own_cgroup_lines",
                        lambda pid: [("cpuacct", "/pod2"), ("cpu", "/pod2"), ("", "/")])

    limit = cpu_limit.cpu_limit()

    assert limit.cores == pytest.approx(min(1.5, len(os.sched_getaffinity(0))))
    assert limit.source == "cgroup v1 cpu.cfs_quota_us"
    assert limit.reading().cgroup_cpu_s == pytest.approx(3.0)


def test_without_a_quota_the_bound_is_the_cores_it_may_use(cgroup_root, monkeypatch):
    monkeypatch.setattr(cpu_limit, "_own_cgroup_lines", lambda pid: [])

    limit = cpu_limit.cpu_limit()

    assert limit.source == "cpu affinity" and limit.cores >= 1
    assert limit.reading().cgroup_cpu_s is None
