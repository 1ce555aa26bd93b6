"""Per-version inference statistics, counted as Triton counts them, summed over every worker.

Triton's statistics extension reports, per version: successful and failed requests with their total
time, the time requests spent queued, gathering their inputs, running and splitting their outputs, and
the same per batch size. The request path adds to plain integers here (one method call a request, one
a batch); `sync` hands the growth to prometheus_client values about once a second (workers) or before a
read (one process), so with `--workers N` (or Ray ingress replicas on one node) they land in the same
multiprocess files as the metrics and any worker reads everyone's sums, exactly as /metrics does.

They are kept off /metrics: per batch size they would multiply the series a scrape returns, and the
exported histograms (`sluice_queue_wait_seconds`, `sluice_compute_duration_seconds`, ...) already show
the same times to Prometheus.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import Metric

STATISTICS = "sluice_statistics"
"""Counter (model, version, field): every additive figure; never exported on /metrics."""
LAST_INFERENCE = "sluice_statistics_last_inference_ms"
"""Gauge (model, version): milliseconds since the epoch of the last request answered; the max over workers."""

PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_PHASES = ("compute_input", "compute_infer", "compute_output")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0


@dataclass
class VersionTotals:
    """One version's figures, summed over every process that served it."""

    phases: dict[str, Duration] = field(default_factory=lambda: {p: Duration() for p in PHASES})
    batches: dict[int, dict[str, Duration]] = field(default_factory=dict)
    """Batch size (rows) -> phase -> executions of that size and their time (successful executions only)."""
    last_inference_ms: int = 0

    @property
    def execution_count(self) -> int:
        return sum(b["compute_infer"].count for b in self.batches.values())

    @property
    def inference_count(self) -> int:
        """Rows inferred: each row of a batched request counts, as Triton counts them."""
        return sum(size * b["compute_infer"].count for size, b in self.batches.items())


class StatisticsCounters:
    """The prometheus_client values the versions' counts are synced into (a registry of their own, not scraped)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.values = Counter(
            STATISTICS,
            "Inference statistics (Triton's extension).",
            ("model", "version", "field"),
            registry=self.registry,
        )
        self.last = Gauge(
            LAST_INFERENCE,
            "Last inference, ms since the epoch.",
            ("model", "version"),
            registry=self.registry,
            multiprocess_mode="max",
        )

    def version(self, model: str, version: str) -> VersionStatistics:
        return VersionStatistics(self, model, version)


class VersionStatistics:
    """One version's counts in this process: plain integers on the request path, synced off it."""

    __slots__ = ("_batches", "_counters", "_last", "_model", "_synced", "_version", "counts", "last_ms")

    def __init__(self, counters: StatisticsCounters, model: str, version: str) -> None:
        self._counters = counters
        self._model = model
        self._version = version
        # success, fail, queue, compute_input, compute_infer, compute_output: [count, ns] each, flat.
        self.counts = [0] * (2 * len(PHASES))
        self._synced = [0] * (2 * len(PHASES))
        self._batches: dict[int, list[int]] = {}
        """rows -> [count, input ns, infer ns, output ns, and the same four as last synced]."""
        self.last_ms = 0
        self._last = 0

    def request(self, ok: bool, elapsed_s: float) -> None:
        """A finished request routed to this version: a success, or a failure of any kind (Triton's `fail`)."""
        counts = self.counts
        i = 0 if ok else 2
        counts[i] += 1
        counts[i + 1] += int(elapsed_s * 1e9)
        if ok:
            self.last_ms = time.time_ns() // 1_000_000

    def ran(self, enqueued_ns: int, gathered_ns: int, started_ns: int, finished_ns: int, split_ns: int) -> None:
        """A request whose batch ran (time.time_ns of each step): its time queued, gathering the batch's inputs,
        in the runtime, splitting the outputs. A step of the wall clock never makes a time negative."""
        counts = self.counts
        counts[4] += 1
        counts[5] += max(0, gathered_ns - enqueued_ns)
        counts[6] += 1
        counts[7] += max(0, started_ns - gathered_ns)
        counts[8] += 1
        counts[9] += max(0, finished_ns - started_ns)
        counts[10] += 1
        counts[11] += max(0, split_ns - finished_ns)

    def batch(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """A successful runtime call of `rows` rows."""
        entry = self._batches.get(rows)
        if entry is None:
            entry = self._batches[rows] = [0] * 8
        entry[0] += 1
        entry[1] += input_ns
        entry[2] += infer_ns
        entry[3] += output_ns

    def sync(self) -> None:
        values = self._counters.values
        model, version = self._model, self._version
        counts, synced = self.counts, self._synced
        for i, name in enumerate(_FIELDS):
            if counts[i] != synced[i]:
                values.labels(model, version, name).inc(counts[i] - synced[i])
                synced[i] = counts[i]
        for rows, entry in self._batches.items():
            for j, name in enumerate(_BATCH_FIELDS):
                if entry[j] != entry[j + 4]:
                    values.labels(model, version, f"batch:{rows}:{name}").inc(entry[j] - entry[j + 4])
                    entry[j + 4] = entry[j]
        if self.last_ms != self._last:
            self._counters.last.labels(model, version).set(self.last_ms)
            self._last = self.last_ms


_FIELDS = tuple(f"{p}:{unit}" for p in PHASES for unit in ("count", "ns"))
_BATCH_FIELDS = ("count", "compute_input", "compute_infer", "compute_output")


def read_totals(families: Iterable[Metric]) -> dict[tuple[str, str], VersionTotals]:
    """The versions' totals from collected families (this process's registry, or every worker's files)."""
    totals: dict[tuple[str, str], VersionTotals] = {}

    def of(labels: dict[str, Any]) -> VersionTotals:
        key = (str(labels["model"]), str(labels["version"]))
        found = totals.get(key)
        if found is None:
            found = totals[key] = VersionTotals()
        return found

    for family in families:
        if family.name == LAST_INFERENCE:
            for sample in family.samples:
                t = of(sample.labels)
                t.last_inference_ms = max(t.last_inference_ms, int(sample.value))
        elif family.name == STATISTICS:
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue  # _created
                _add(of(sample.labels), str(sample.labels["field"]), round(sample.value))
    return totals


def _add(totals: VersionTotals, name: str, value: int) -> None:
    parts = name.split(":")
    if len(parts) == 2 and parts[0] in totals.phases:
        duration = totals.phases[parts[0]]
        if parts[1] == "count":
            duration.count += value
        else:
            duration.ns += value
    elif len(parts) == 3 and parts[0] == "batch" and parts[1].isdigit():
        batch = totals.batches.setdefault(int(parts[1]), {p: Duration() for p in BATCH_PHASES})
        if parts[2] == "count":
            for phase in BATCH_PHASES:
                batch[phase].count += value
        elif parts[2] in batch:
            batch[parts[2]].ns += value
