"""The ingress replicas' Prometheus multiprocess directory: one per run, removed with the run.

prometheus_client's multiprocess mode keeps a few files per process (about 20 for an ingress replica) in a
directory that the replicas of a node share, so that one scrape shows them all. A replica cannot remove it when
it stops (Serve may be restarting it, and the counters of the dead must keep adding up), so the run that made it
removes it once the ingress is deleted, on every node the replicas may have written to, as `--workers`'
supervisor removes its own.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import ray

PREFIX = "sluice-metrics-"


def new_metrics_dir() -> str:
    """A fresh path in this process's temp dir (the replicas make it on their nodes: nothing of an earlier run)."""
    return str(Path(tempfile.gettempdir()) / f"{PREFIX}{uuid.uuid4().hex[:12]}")


@ray.remote(num_cpus=0)
def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_metrics_dir(path: str, *, every_node: bool, timeout_s: float = 30.0) -> None:
    """Remove it here and, with `every_node` (a joined cluster: replicas may have run on other machines), on each
    live node of the cluster. Call once the ingress replicas have stopped."""
    if not Path(path).name.startswith(PREFIX):
        raise ValueError(f"not a metrics directory of Sluice's: {path}")
    shutil.rmtree(path, ignore_errors=True)
    if not every_node:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
    calls = [
        _remove.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(path)
        for node in nodes
    ]
    ray.wait(calls, num_returns=len(calls), timeout=timeout_s)
