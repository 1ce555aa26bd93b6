"""The gateway's process metrics summed over its whole process tree: with workers, one scrape shows them all.

Roots: the supervisor with `--workers` (every worker is below it); on Ray, the processes that write into this
node's metrics directory (the ingress replicas, whose parent is Ray's own raylet).

prometheus_client's ProcessCollector describes the process it runs in. With `--workers N` a scrape
reaches one worker at random, so its figures would jump between workers. This collector reads
/proc for the supervisor and every process below it (workers, their prediction-log writers, the
monitor's worker) and exports the same `process_*` names, summed, so dashboards need no change.

CPU time stays monotonic when a worker dies: a reaped child's time moves into its parent's
`cutime`/`cstime`, which are counted too. Linux only; elsewhere it exports nothing.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """`root` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


class ProcessGroupCollector(Collector):
    """`roots`: the tree's root (`--workers`: the supervisor), or a function giving the roots each scrape (Ray:
    the ingress replicas of this node, each under Ray's own processes)."""

    def __init__(self, roots: int | Callable[[], list[int]]) -> None:
        self._roots = roots
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/stat") as f:
            btime = next(line for line in f if line.startswith("btime"))
        self._boot = float(btime.split()[1])

    def collect(self) -> Iterator[Metric]:
        if not _PROC.is_dir():
            return
        roots = [self._roots] if isinstance(self._roots, int) else self._roots()
        ticks = 0  # added as integers and divided once: a reaped child's ticks move into its parent's cutime, and
        # quotients added per process round differently from one quotient, so the counter could go back by 1e-14
        rss = vms = fds = 0.0
        start = None
        for pid in {p for root in roots for p in descendants(root)}:
            fields = _stat(pid)
            if fields is None:
                continue
            # Fields (from state, 0-based): 11 utime, 12 stime, 13 cutime, 14 cstime, 19 starttime, 20 vsize, 21 rss.
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
            vms += int(fields[20])
            rss += int(fields[21]) * self._page
            if pid in roots:
                started = self._boot + int(fields[19]) / self._ticks
                start = started if start is None else min(start, started)
            with contextlib.suppress(OSError):
                fds += len(os.listdir(_PROC / str(pid) / "fd"))
        scope = " (the gateway's processes together: supervisor, workers and their helpers)"
        cpu = ticks / self._ticks
        yield CounterMetricFamily("process_cpu_seconds_total", "Total user and system CPU time in seconds" + scope, cpu)
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes" + scope, rss)
        yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes" + scope, vms)
        yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors" + scope, fds)
        yield GaugeMetricFamily(
            "process_max_fds",
            "Maximum number of open file descriptors (each process's limit)",
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        if start is not None:
            yield GaugeMetricFamily(
                "process_start_time_seconds",
                "Start time of the earliest root since unix epoch in seconds",
                start,
            )
