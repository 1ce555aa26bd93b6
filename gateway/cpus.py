"""The CPUs this process may use: its CPU affinity, bounded by its cgroup's CPU quota.

A container's CPU limit (Kubernetes `resources.limits.cpu`, `docker run --cpus`) is a CFS quota, not an
affinity: a pod limited to 2 CPUs on a 64-core node still sees 64 CPUs in `sched_getaffinity`, and
`--workers auto` would start 64 workers, each holding its own copy of every model, throttled to 2 CPUs
between them and soon out of memory. So "auto" also reads the quota, from cgroup v2's `cpu.max` or cgroup
v1's `cpu.cfs_quota_us`/`cpu.cfs_period_us`, in the process's cgroup and every ancestor (a pod's limit can
sit on the pod's cgroup above the container's), and takes the smallest; a fraction is rounded down (a 1.5
CPU limit gives one worker, as Go's automaxprocs does), never below one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max` ("200000 100000": 2 CPUs; "max 100000": no quota) as CPUs, or None."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    quota, period = int(fields[0]), int(fields[1])
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` as CPUs, or None (a quota of -1: none)."""
    quota, period = int(quota_text), int(period_text)
    return quota / period if quota > 0 and period > 0 else None


def _cgroup_dirs(mount: Path, path: str) -> list[Path]:
    """The process's cgroup directory under `mount` and its ancestors up to `mount` (the mount alone when the
    path is not there: inside a container without a cgroup namespace the host's path is not mounted)."""
    here = mount / path.lstrip("/")
    dirs = [d for d in (here, *here.parents) if d == mount or mount in d.parents]
    return [d for d in dirs if d.is_dir()] or [mount]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The smallest CPU quota on the process's cgroup path, in CPUs; None where there is none (or no cgroup)."""
    membership = _read(proc_cgroup)
    if membership is None:
        return None
    limits: list[float] = []
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2, the unified hierarchy
            for d in _cgroup_dirs(root, path):
                text = _read(d / "cpu.max")
                limit = parse_cpu_max(text) if text else None
                if limit is not None:
                    limits.append(limit)
        elif "cpu" in controllers.split(","):  # cgroup v1, the cpu controller's hierarchy
            mount = next((root / n for n in (controllers, "cpu,cpuacct", "cpu") if (root / n).is_dir()), None)
            for d in _cgroup_dirs(mount, path) if mount is not None else []:
                quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                limit = parse_cfs(quota, period) if quota and period else None
                if limit is not None:
                    limits.append(limit)
    return min(limits, default=None)


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process may run on (affinity), bounded by its cgroup CPU quota rounded down; at least 1."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    return max(1, min(affinity, math.floor(limit)) if limit is not None else affinity)
