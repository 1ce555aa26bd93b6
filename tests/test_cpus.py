"""`--workers auto` counts the CPUs a container may use, not the node's: cgroup trees laid out in files as
cgroup v2 and v1 show them inside a container (gateway/cpus.py reads them from an injected root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cpus import cgroup_cpu_limit, parse_cfs, parse_cpu_max, usable_cpus
from gateway.workers import worker_count

AFFINITY = len(os.sched_getaffinity(0))


def cgroup_v2(tmp_path: Path, path: str, limits: dict[str, str]) -> tuple[Path, Path]:
    """A unified hierarchy at tmp/cgroup with `cpu.max` in the given directories; the process in `path`."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for directory, cpu_max in limits.items():
        (root / directory).mkdir(parents=True, exist_ok=True)
        (root / directory / "cpu.max").write_text(cpu_max + "\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text(f"0::{path}\n")
    return root, proc


def test_cpu_max_and_cfs_files_parse_to_cpus() -> None:
    assert parse_cpu_max("200000 100000\n") == 2.0
    assert parse_cpu_max("150000 100000") == 1.5
    assert parse_cpu_max("max 100000") is None
    assert parse_cfs("300000\n", "100000\n") == 3.0
    assert parse_cfs("-1", "100000") is None


def test_a_container_limit_bounds_the_workers(tmp_path: Path) -> None:
    root, proc = cgroup_v2(tmp_path, "/", {".": "100000 100000"})  # a 1-CPU container with its own namespace
    assert cgroup_cpu_limit(root, proc) == 1.0
    assert usable_cpus(root, proc) == 1


def test_the_smallest_limit_on_the_path_wins_and_a_fraction_rounds_down(tmp_path: Path) -> None:
    root, proc = cgroup_v2(
        tmp_path,
        "/kubepods/pod1/ctr",
        {".": "max 100000", "kubepods/pod1": "150000 100000", "kubepods/pod1/ctr": "max 100000"},
    )
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert usable_cpus(root, proc) == 1


def test_no_quota_leaves_the_affinity(tmp_path: Path) -> None:
    root, proc = cgroup_v2(tmp_path, "/", {".": "max 100000"})
    assert cgroup_cpu_limit(root, proc) is None
    assert usable_cpus(root, proc) == AFFINITY
    assert usable_cpus(tmp_path / "none", tmp_path / "no-proc-file") == AFFINITY


def test_a_host_path_that_is_not_mounted_reads_the_mount_itself(tmp_path: Path) -> None:
    root, proc = cgroup_v2(tmp_path, "/system.slice/docker-abc.scope", {".": "50000 100000"})
    assert cgroup_cpu_limit(root, proc) == 0.5
    assert usable_cpus(root, proc) == 1, "never below one"


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    container = root / "cpu,cpuacct" / "docker" / "abc"
    container.mkdir(parents=True)
    (container / "cpu.cfs_quota_us").write_text("300000\n")
    (container / "cpu.cfs_period_us").write_text("100000\n")
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cgroup_cpu_limit(root, proc) == 3.0
    assert usable_cpus(root, proc) == min(AFFINITY, 3)


def test_workers_auto_is_the_usable_cpus_of_this_process() -> None:
    assert worker_count("auto") == usable_cpus() >= 1
    assert worker_count("3") == 3
    with pytest.raises(ValueError, match="at least 1"):
        worker_count("0")
