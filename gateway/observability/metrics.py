"""Every Prometheus metric Sluice exports, defined here and nowhere else.

Dashboards and alert rules are checked against `METRIC_NAMES`. Children are bound once per
model version (`VersionMetrics`) so the hot path does a dictionary lookup, not a label parse.
Each gateway owns its registry, so several gateways can live in one test process.

With `--workers N` the workers share one port, so a scrape reaches one of them at random: they run
in prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the supervisor before
the workers start), each worker writes its values to memory-mapped files, and whichever worker
answers /metrics sums every worker's counters and histograms. Each gauge says how its workers'
values combine (`multiprocess_mode`): queue depths and in-flight requests add up, a version is
ready only when it is ready on every worker, and the control plane's gauges (rollout phase, drift,
accuracy), which only the leader sets, show the value set last. Figures read at scrape time from
plain counters (the prediction log's) are copied into real metrics once a second instead
(`sync_watched`), and collectors that describe the whole machine (GPUs) are added by
`register_machine_collector`, so a scrape shows them once.
"""

from __future__ import annotations

import functools
import os
import re
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.observability.process_group import ProcessGroupCollector
from gateway.observability.statistics import STATISTICS, StatisticsCounters, VersionStatistics

REQUESTS = "sluice_requests"
REQUEST_DURATION = "sluice_request_duration_seconds"
QUEUE_WAIT = "sluice_queue_wait_seconds"
COMPUTE_DURATION = "sluice_compute_duration_seconds"
BATCH_SIZE = "sluice_batch_size"
BATCH_REQUESTS = "sluice_batch_requests"
BATCH_FAILURES = "sluice_batch_failures"
QUEUE_DEPTH = "sluice_queue_depth"
QUEUE_CAPACITY = "sluice_queue_capacity"
INFLIGHT = "sluice_inflight_requests"
MODEL_READY = "sluice_model_ready"
EXECUTION_PROVIDER = "sluice_execution_provider"
RUNTIME_DEVICE = "sluice_runtime_device"
RUNTIME_HANGS = "sluice_runtime_hangs"
# Hardening: input guards, inference key quotas, key reloads, HTTP connections.
INPUT_GUARD_VIOLATIONS = "sluice_input_guard_violations"
KEY_REQUESTS = "sluice_inference_key_requests"
KEY_RELOADS = "sluice_key_reloads"
HTTP_CONNECTIONS = "sluice_http_connections"
HTTP_CONNECTIONS_CLOSED = "sluice_http_connections_closed"
# Control plane: traffic, rollouts, shadows, webhooks.
TRAFFIC_WEIGHT = "sluice_traffic_weight"
ROLLOUT_PHASE = "sluice_rollout_phase"
ROLLOUT_STEP = "sluice_rollout_step"
ROLLOUT_CHECKS = "sluice_rollout_checks"
ROLLBACKS = "sluice_rollbacks"
PROMOTIONS = "sluice_promotions"
SHADOW_REQUESTS = "sluice_shadow_requests"
SHADOW_DROPPED = "sluice_shadow_dropped"
SHADOW_AGREEMENT = "sluice_shadow_agreement_ratio"
SHADOW_ABS_DIFF = "sluice_shadow_abs_diff"
SHADOW_LATENCY = "sluice_shadow_latency_seconds"
WEBHOOK_DELIVERIES = "sluice_webhook_deliveries"
# Model repositories on object storage: fetches, syncs, the local cache.
REPOSITORY_FETCHES = "sluice_repository_fetches"
REPOSITORY_SYNC_ERRORS = "sluice_repository_sync_errors"
MODEL_CACHE_BYTES = "sluice_model_cache_bytes"
# Monitors: the prediction log.
PREDICTION_LOG_RECORDS = "sluice_prediction_log_records"
PREDICTION_LOG_QUEUE_DEPTH = "sluice_prediction_log_queue_depth"
PREDICTION_SPOOL_RECORDS = "sluice_prediction_spool_records"
PREDICTION_SPOOL_BYTES = "sluice_prediction_spool_bytes"
PREDICTION_SPOOL_USAGE = "sluice_prediction_spool_usage_bytes"
PREDICTION_SPOOL_CAPACITY = "sluice_prediction_spool_capacity_bytes"
# Monitors: drift, accuracy, triggers.
DRIFT_SHARE = "sluice_drift_share"
DATASET_DRIFT = "sluice_dataset_drift"
FEATURE_DRIFT_SCORE = "sluice_feature_drift_score"
PREDICTION_DRIFT_SCORE = "sluice_prediction_drift_score"
MONITOR_RUNS = "sluice_monitor_runs"
MONITOR_RUN_DURATION = "sluice_monitor_run_duration_seconds"
ACCURACY = "sluice_accuracy"
LABEL_COVERAGE = "sluice_label_coverage"
LABEL_LAG = "sluice_label_lag_seconds"
TRIGGER_FIRINGS = "sluice_trigger_firings"
# GPUs, read through NVML at scrape time (gateway.observability.gpu); absent without a GPU.
GPU_UTILIZATION = "sluice_gpu_utilization_ratio"
GPU_MEMORY_USED = "sluice_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = "sluice_gpu_memory_total_bytes"
GPU_PROCESS_MEMORY = "sluice_gpu_process_memory_bytes"

# Exposed names (counters gain _total, histograms _bucket/_sum/_count).
METRIC_NAMES = (
    f"{REQUESTS}_total",
    REQUEST_DURATION,
    QUEUE_WAIT,
    COMPUTE_DURATION,
    BATCH_SIZE,
    BATCH_REQUESTS,
    f"{BATCH_FAILURES}_total",
    QUEUE_DEPTH,
    QUEUE_CAPACITY,
    INFLIGHT,
    MODEL_READY,
    EXECUTION_PROVIDER,
    RUNTIME_DEVICE,
    f"{RUNTIME_HANGS}_total",
    f"{INPUT_GUARD_VIOLATIONS}_total",
    f"{KEY_REQUESTS}_total",
    f"{KEY_RELOADS}_total",
    HTTP_CONNECTIONS,
    f"{HTTP_CONNECTIONS_CLOSED}_total",
    TRAFFIC_WEIGHT,
    ROLLOUT_PHASE,
    ROLLOUT_STEP,
    f"{ROLLOUT_CHECKS}_total",
    f"{ROLLBACKS}_total",
    f"{PROMOTIONS}_total",
    f"{SHADOW_REQUESTS}_total",
    f"{SHADOW_DROPPED}_total",
    SHADOW_AGREEMENT,
    SHADOW_ABS_DIFF,
    SHADOW_LATENCY,
    f"{WEBHOOK_DELIVERIES}_total",
    f"{REPOSITORY_FETCHES}_total",
    f"{REPOSITORY_SYNC_ERRORS}_total",
    MODEL_CACHE_BYTES,
    f"{PREDICTION_LOG_RECORDS}_total",
    PREDICTION_LOG_QUEUE_DEPTH,
    f"{PREDICTION_SPOOL_RECORDS}_total",
    f"{PREDICTION_SPOOL_BYTES}_total",
    PREDICTION_SPOOL_USAGE,
    PREDICTION_SPOOL_CAPACITY,
    DRIFT_SHARE,
    DATASET_DRIFT,
    FEATURE_DRIFT_SCORE,
    PREDICTION_DRIFT_SCORE,
    f"{MONITOR_RUNS}_total",
    MONITOR_RUN_DURATION,
    ACCURACY,
    LABEL_COVERAGE,
    LABEL_LAG,
    f"{TRIGGER_FIRINGS}_total",
)

# The device placement's runtime processes (gateway/serving/device_host.py), per device and version.
DEVICE_BATCH_SIZE = "sluice_device_batch_size"
DEVICE_BATCH_WORKERS = "sluice_device_batch_workers"
DEVICE_QUEUE_WAIT = "sluice_device_queue_wait_seconds"
DEVICE_COMPUTE = "sluice_device_compute_duration_seconds"
DEVICE_HOST_MEMORY = "sluice_device_host_resident_memory_bytes"
DEVICE_HOST_RESTARTS = "sluice_device_host_restarts"
DEVICE_INSTANCES = "sluice_device_instances"
DEVICE_RUNNING = "sluice_device_batches_running"
DEVICE_METRIC_NAMES = (
    DEVICE_BATCH_SIZE,
    DEVICE_BATCH_WORKERS,
    DEVICE_QUEUE_WAIT,
    DEVICE_COMPUTE,
    DEVICE_HOST_MEMORY,
    DEVICE_HOST_RESTARTS,
    DEVICE_INSTANCES,
    DEVICE_RUNNING,
)
"""Exported only while a runtime process runs (`runtime.placement: device` with `--workers`)."""

GPU_METRIC_NAMES = (GPU_UTILIZATION, GPU_MEMORY_USED, GPU_MEMORY_TOTAL, GPU_PROCESS_MEMORY)
"""Exported only where NVML finds a GPU, so kept apart from METRIC_NAMES (which every gateway exports)."""

STANDARD_METRIC_NAMES = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
    "process_open_fds",
    "process_max_fds",
    "python_info",
    "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total",
    "python_gc_collections_total",
)
"""prometheus_client's process, platform and GC collectors, on the registry of a one-process gateway."""

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
SUPERVISOR_ENV = "SLUICE_SUPERVISOR_PID"
"""Set by `--workers`' supervisor: the root of the process tree the process_* metrics describe."""
_WRITER = re.compile(r"_(\d+)\.db$")


def _writers(directory: str) -> list[int]:
    """The live processes writing metrics into the directory."""
    pids = {int(m.group(1)) for name in os.listdir(directory) if (m := _WRITER.search(name))}
    return [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_the_dead(directory: str) -> None:
    """Drop the live gauges of processes that died without anyone marking them (a Ray replica that was killed:
    no supervisor watches it); their counters stay, as totals never go back."""
    from prometheus_client import multiprocess

    pids = {int(m.group(1)) for name in os.listdir(directory) if (m := _WRITER.search(name))}
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


_RECORDS_HELP = "Prediction records by fate: written, dropped (queue full), failed (write error), sampled_out."
_QUEUED_HELP = "Prediction records held in memory to be written (the batch being written included)."
_SPOOL_RECORDS_HELP = (
    "Prediction records through the local spool (the database away, memory full): spooled, replayed (read "
    "back and written), dropped (memory and spool full, or the spool's disk failing)."
)
_SPOOL_BYTES_HELP = "Bytes through the local spool: spooled, replayed, dropped, corrupt (a torn tail skipped)."
_SPOOL_USAGE_HELP = "Bytes on disk in the prediction log's local spool."
_SPOOL_CAPACITY_HELP = "The prediction log's local spool's size cap (SLUICE_PREDICTION_SPOOL_BYTES)."

ROLLOUT_PHASES = ("progressing", "paused", "promoted", "rolled_back", "aborted")

OUTCOMES = ("ok", "invalid", "not_found", "not_ready", "overloaded", "timeout", "error", "draining", "cancelled")
CONNECTION_CLOSE_REASONS = ("header_timeout", "body_timeout", "header_too_large", "connection_limit", "evicted_idle")

SHADOW_ABS_DIFF_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)
LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        mv = ("model", "version")
        self.requests = Counter(
            REQUESTS, "Inference requests by protocol and outcome.", (*mv, "protocol", "outcome"), registry=r
        )
        self.request_duration = Histogram(
            REQUEST_DURATION,
            "Time from decoded request to encoded response.",
            (*mv, "protocol"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            QUEUE_WAIT,
            "Time a request waited in its version's batch queue.",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            COMPUTE_DURATION, "Runtime time for one batch.", mv, buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(BATCH_SIZE, "Rows in one runtime call.", mv, buckets=_BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram(
            BATCH_REQUESTS, "Requests merged into one runtime call.", mv, buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_failures = Counter(
            BATCH_FAILURES,
            "Runtime calls that raised (a failing batch is split and retried).",
            mv,
            registry=r,
        )
        self.queue_depth = Gauge(
            QUEUE_DEPTH, "Requests waiting in the version's batch queue.", mv, registry=r, multiprocess_mode="livesum"
        )
        self.queue_capacity = Gauge(
            QUEUE_CAPACITY,
            "Requests the version's batch queue holds before it sheds load (429).",
            mv,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.inflight = Gauge(
            INFLIGHT, "Requests being served (queued or running).", mv, registry=r, multiprocess_mode="livesum"
        )
        self.model_ready = Gauge(
            MODEL_READY,
            "1 when the version is loaded, warmed and serving (on every worker).",
            mv,
            registry=r,
            multiprocess_mode="livemin",
        )
        self.execution_provider = Gauge(
            EXECUTION_PROVIDER,
            "1 for the execution provider that runs the version.",
            (*mv, "provider"),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.runtime_device = Gauge(
            RUNTIME_DEVICE,
            "1 for the device the version's runtime is placed on: cpu, cuda:<ordinal>, or remote.",
            (*mv, "device"),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.runtime_hangs = Counter(
            RUNTIME_HANGS,
            "Runtime calls that ran past the model's watchdog limit and were cancelled.",
            mv,
            registry=r,
        )
        self.input_guard_violations = Counter(
            INPUT_GUARD_VIOLATIONS,
            "Requests that broke one of the model's input guards, by feature and action (refused or flagged).",
            (*mv, "feature", "action"),
            registry=r,
        )
        self.key_requests = Counter(
            KEY_REQUESTS,
            "Inference requests by inference key name (never the key) and quota outcome (admitted, throttled).",
            ("key_name", "outcome"),
            registry=r,
        )
        self.key_reloads = Counter(
            KEY_RELOADS,
            "Reloads of the admin tokens and inference keys files (SIGHUP or a change), by outcome (ok, error).",
            ("kind", "outcome"),
            registry=r,
        )
        self.http_connections = Gauge(
            HTTP_CONNECTIONS, "Open HTTP connections.", registry=r, multiprocess_mode="livesum"
        )
        self.http_connections_closed = Counter(
            HTTP_CONNECTIONS_CLOSED,
            "HTTP connections the gateway closed to protect itself, by reason "
            "(header_timeout, body_timeout, header_too_large, connection_limit, evicted_idle).",
            ("reason",),
            registry=r,
        )
        # Control plane
        self.traffic_weight = Gauge(
            TRAFFIC_WEIGHT,
            "Percent of a model's traffic each version receives.",
            mv,
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.rollout_phase = Gauge(
            ROLLOUT_PHASE,
            "1 for the phase a model's rollout is in.",
            ("model", "canary", "phase"),
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.rollout_step = Gauge(
            ROLLOUT_STEP,
            "Index of the rollout step in force (0-based).",
            ("model",),
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.rollout_checks = Counter(
            ROLLOUT_CHECKS, "Rollout analysis verdicts by check.", ("model", "check", "verdict"), registry=r
        )
        self.rollbacks = Counter(ROLLBACKS, "Canaries rolled back, by reason.", ("model", "reason"), registry=r)
        self.promotions = Counter(PROMOTIONS, "Canaries promoted to stable.", ("model",), registry=r)
        self.shadow_requests = Counter(
            SHADOW_REQUESTS, "Requests copied to a shadow version, by outcome.", (*mv, "outcome"), registry=r
        )
        self.shadow_dropped = Counter(
            SHADOW_DROPPED, "Shadow copies dropped because the shadow's queue was full.", mv, registry=r
        )
        self.shadow_agreement = Gauge(
            SHADOW_AGREEMENT,
            "Share of compared shadow answers that agree with the primary's.",
            mv,
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.shadow_abs_diff = Histogram(
            SHADOW_ABS_DIFF,
            "Mean absolute difference of a shadow answer from the primary's.",
            mv,
            buckets=SHADOW_ABS_DIFF_BUCKETS,
            registry=r,
        )
        self.shadow_latency = Histogram(
            SHADOW_LATENCY, "Shadow version inference time.", mv, buckets=LATENCY_BUCKETS, registry=r
        )
        self.webhook_deliveries = Counter(
            WEBHOOK_DELIVERIES,
            "Webhook deliveries by outcome (delivered, retried, failed).",
            ("event", "outcome"),
            registry=r,
        )
        self.drift_share = Gauge(
            DRIFT_SHARE,
            "Share of drifted features in the version's last drift run.",
            mv,
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.dataset_drift = Gauge(
            DATASET_DRIFT,
            "1 when the last drift run found dataset drift.",
            mv,
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.feature_drift_score = Gauge(
            FEATURE_DRIFT_SCORE,
            "Drift score of one feature in the last run (the method's statistic: p-value or distance).",
            (*mv, "feature", "method"),
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.prediction_drift_score = Gauge(
            PREDICTION_DRIFT_SCORE,
            "Drift score of one output in the last run.",
            (*mv, "output", "method"),
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.monitor_runs = Counter(
            MONITOR_RUNS,
            "Drift and accuracy runs by kind and status (ok, no_data, error).",
            (*mv, "kind", "status"),
            registry=r,
        )
        self.monitor_run_duration = Histogram(
            MONITOR_RUN_DURATION, "Wall time of one drift or accuracy run.", ("model", "kind"), registry=r
        )
        self.accuracy = Gauge(
            ACCURACY,
            "The version's figures over its last labeled window, by metric.",
            (*mv, "metric"),
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.label_coverage = Gauge(
            LABEL_COVERAGE,
            "Share of the window's predictions that have a label.",
            mv,
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.label_lag = Gauge(
            LABEL_LAG,
            "Median seconds from prediction to label in the last window.",
            mv,
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.trigger_firings = Counter(
            TRIGGER_FIRINGS, "Monitor trigger firings by rule and action.", (*mv, "rule", "action"), registry=r
        )
        self.statistics = StatisticsCounters()
        """Triton's per-version statistics: shared across workers like the metrics, but not exported."""
        self.repository_fetches = Counter(
            REPOSITORY_FETCHES,
            "Fetches of version files from an object-store repository, by outcome (downloaded, cached: reused "
            "from the local cache, refused: not the expected bytes, failed: the store, after retries).",
            ("outcome",),
            registry=r,
        )
        self.repository_sync_errors = Counter(
            REPOSITORY_SYNC_ERRORS, "Repository syncs that could not read the repository.", registry=r
        )
        self.model_cache_bytes = Gauge(
            MODEL_CACHE_BYTES,
            "Bytes of version files in the local model cache (object-store repositories).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._versions: dict[tuple[str, str], VersionMetrics] = {}
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_ENV) or None
        """Set (by the supervisor) when this process is one of several workers sharing a port."""
        self._machine: list[Collector] = []
        self._synced: list[Callable[[], None]] = []
        self._samplers: list[Callable[[], None]] = [self._sync_fast]
        self._fast: list[FastCounter | FastHistogram | VersionStatistics] = []
        if self.multiprocess_dir is None:
            # The default registry has these; a registry of our own must ask for them (the Overview's CPU,
            # memory and GC panels read them).
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        else:
            # With workers a scrape reaches one worker at random: export the process figures of the whole
            # tree under the supervisor instead (the GC's are per interpreter, and left out).
            supervisor = os.environ.get(SUPERVISOR_ENV)
            roots = int(supervisor) if supervisor else functools.partial(_writers, self.multiprocess_dir)
            self.register_machine_collector(ProcessGroupCollector(roots))
            _forget_the_dead(self.multiprocess_dir)
            self.register_machine_collector(PlatformCollector(registry=None))

    def watch_prediction_log(self, counts: Callable[[], Mapping[str, int]], depth: Callable[[], int]) -> None:
        """Export the prediction log's counters: the hot path only adds to plain ints.

        `counts`: records by outcome (written, dropped, failed, sampled_out); `depth`: records queued.
        One process: read at scrape time. Workers: copied into shared metrics by `sync_watched`.
        """
        if self.multiprocess_dir is None:
            self.registry.register(_PredictionLogCollector(counts, depth))
            return
        records = Counter(PREDICTION_LOG_RECORDS, _RECORDS_HELP, ("outcome",), registry=None)
        queued = Gauge(PREDICTION_LOG_QUEUE_DEPTH, _QUEUED_HELP, registry=None, multiprocess_mode="livesum")
        copy = _copier(records, counts)

        def sync() -> None:
            copy()
            queued.set(depth())

        self._synced.append(sync)

    def watch_prediction_spool(
        self,
        records: Callable[[], Mapping[str, int]],
        volume: Callable[[], Mapping[str, int]],
        usage: Callable[[], int],
        capacity: int,
    ) -> None:
        """Export the prediction log's spool, read at scrape time like the log's counters.

        `records`: by outcome (spooled, replayed, dropped); `volume`: bytes by outcome (the same, and
        corrupt); `usage`: bytes on disk now; `capacity`: its cap."""
        if self.multiprocess_dir is None:
            self.registry.register(_SpoolCollector(records, volume, usage, capacity))
            return
        counted = Counter(PREDICTION_SPOOL_RECORDS, _SPOOL_RECORDS_HELP, ("outcome",), registry=None)
        weighed = Counter(PREDICTION_SPOOL_BYTES, _SPOOL_BYTES_HELP, ("outcome",), registry=None)
        used = Gauge(PREDICTION_SPOOL_USAGE, _SPOOL_USAGE_HELP, registry=None, multiprocess_mode="livesum")
        cap = Gauge(PREDICTION_SPOOL_CAPACITY, _SPOOL_CAPACITY_HELP, registry=None, multiprocess_mode="livesum")
        copy_records, copy_bytes = _copier(counted, records), _copier(weighed, volume)

        def sync() -> None:
            copy_records()
            copy_bytes()
            used.set(usage())
            cap.set(capacity)

        self._synced.append(sync)

    def fast_counter(self, child: Any) -> FastCounter:
        counter = FastCounter(child)
        self._fast.append(counter)
        return counter

    def fast_histogram(self, child: Any, bounds: tuple[float, ...]) -> FastHistogram:
        histogram = FastHistogram(child, bounds)
        self._fast.append(histogram)
        return histogram

    def version_statistics(self, model: str, version: str) -> VersionStatistics:
        stats = self.statistics.version(model, version)
        self._fast.append(stats)
        return stats

    def statistics_families(self) -> list[Metric]:
        """The statistics' values: this process's, or with workers every worker's summed (this one's synced first;
        the others' are at most a second behind, as on /metrics)."""
        self._sync_fast()
        if self.multiprocess_dir is None:
            return list(self.statistics.registry.collect())
        collector = MultiProcessCollector(None, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return [m for m in collector.collect() if m.name.startswith(STATISTICS)]  # type: ignore[no-untyped-call]

    def _sync_fast(self) -> None:
        for instrument in list(self._fast):
            instrument.sync()

    def add_sampler(self, sample: Callable[[], None]) -> None:
        """`sample` sets gauges from state read off the hot path (queue depths, requests in flight): called
        before each scrape (one process) or about once a second (workers), so requests never pay for them."""
        self._samplers.append(sample)

    def sync_watched(self) -> None:
        """Copy the watched plain counters into the workers' shared metrics (workers only; about once a second)."""
        for sample in self._samplers:
            sample()
        for sync in self._synced:
            sync()

    def register_machine_collector(self, collector: Collector) -> None:
        """A collector that describes the whole machine (not this process): exported once per scrape."""
        self._machine.append(collector)
        if self.multiprocess_dir is None:
            self.registry.register(collector)

    def exposition(self) -> bytes:
        """The /metrics page: this process's registry, or with workers, every worker's values combined."""
        if self.multiprocess_dir is None:
            for sample in self._samplers:
                sample()
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        every = MultiProcessCollector(None, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        combined.register(_Without(every, STATISTICS))
        for collector in self._machine:
            combined.register(collector)
        return generate_latest(combined)

    def version(self, model: str, version: str) -> VersionMetrics:
        key = (model, version)
        vm = self._versions.get(key)
        if vm is None:
            vm = self._versions[key] = VersionMetrics(self, model, version)
        return vm


class FastCounter:
    """A counter child for the request path: `inc` adds to a plain int, `sync` hands the growth to the child.

    prometheus_client takes a lock for each increment; three instruments a request cost the event loop
    about 3 µs of its 60. These are synced before each scrape (one process) or every second (workers).
    """

    __slots__ = ("_child", "_synced", "value")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.value = 0
        self._synced = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def sync(self) -> None:
        value = self.value
        if value != self._synced:
            self._child.inc(value - self._synced)
            self._synced = value


class FastHistogram:
    """A histogram child for the request path: bucket counts in a list, synced into the child's buckets."""

    __slots__ = ("_bounds", "_child", "_synced", "_synced_sum", "counts", "total")

    def __init__(self, child: Any, bounds: tuple[float, ...]) -> None:
        self._child = child
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self._synced = [0] * (len(bounds) + 1)
        self._synced_sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.total += amount

    def sync(self) -> None:
        # The child's own buckets and sum (prometheus_client keeps them per bucket, not cumulative; the last
        # is +Inf). Private attributes, pinned by tests/test_metrics.py's exposition checks.
        buckets = self._child._buckets
        for i, n in enumerate(self.counts):
            if n != self._synced[i]:
                buckets[i].inc(n - self._synced[i])
                self._synced[i] = n
        if self.total != self._synced_sum:
            self._child._sum.inc(self.total - self._synced_sum)
            self._synced_sum = self.total


class VersionMetrics:
    """Metric children bound to one model version; those of every request and every batch are `Fast*` (synced,
    lock-free)."""

    def __init__(self, m: GatewayMetrics, model: str, version: str) -> None:
        self._m = m
        self.model = model
        self.version = version
        self.queue_wait = m.fast_histogram(m.queue_wait.labels(model, version), LATENCY_BUCKETS)
        # A batch's three histograms too: with workers, prometheus_client's multiprocess values cost 2.6 µs an
        # observation (1.0 in one process, 0.18 here), and at one connection every batch is one request's.
        self._compute = m.fast_histogram(m.compute.labels(model, version), LATENCY_BUCKETS)
        self._batch_size = m.fast_histogram(m.batch_size.labels(model, version), _BATCH_BUCKETS)
        self._batch_requests = m.fast_histogram(m.batch_requests.labels(model, version), _BATCH_BUCKETS)
        self._batch_failures = m.batch_failures.labels(model, version)
        self._queue_depth = m.queue_depth.labels(model, version)
        self._inflight = m.inflight.labels(model, version)
        self._outcomes: dict[tuple[str, str], FastCounter] = {}
        self._durations: dict[str, FastHistogram] = {}
        self.statistics = m.version_statistics(model, version)
        """Triton's statistics of the version (`gateway.observability.statistics`)."""

    def outcome(self, protocol: str, outcome: str) -> FastCounter:
        key = (protocol, outcome)
        counter = self._outcomes.get(key)
        if counter is None:
            child = self._m.requests.labels(self.model, self.version, protocol, outcome)
            counter = self._outcomes[key] = self._m.fast_counter(child)
        return counter

    def duration(self, protocol: str) -> FastHistogram:
        histogram = self._durations.get(protocol)
        if histogram is None:
            child = self._m.request_duration.labels(self.model, self.version, protocol)
            histogram = self._durations[protocol] = self._m.fast_histogram(child, LATENCY_BUCKETS)
        return histogram

    def set_ready(self, ready: bool) -> None:
        self._m.model_ready.labels(self.model, self.version).set(1 if ready else 0)

    def set_provider(self, provider: str) -> None:
        self._m.execution_provider.labels(self.model, self.version, provider).set(1)

    def set_placement(self, device: str, queue_capacity: int) -> None:
        """Where the loaded runtime runs (which GPU it shares) and how many requests its queue holds."""
        self._m.runtime_device.labels(self.model, self.version, device).set(1)
        self._m.queue_capacity.labels(self.model, self.version).set(queue_capacity)

    def load(self, queued: int, running: int) -> None:
        """The version's requests waiting in its batch queue, and those in its running batches (sampled)."""
        self._queue_depth.set(queued)
        self._inflight.set(queued + running)

    def batch_done(
        self, rows: int, requests: int, compute_s: float, ok: bool, phases_ns: tuple[int, int, int] | None = None
    ) -> None:
        """`phases_ns`: a successful batch's time gathering inputs, in the runtime, splitting outputs."""
        self._compute.observe(compute_s)
        self._batch_size.observe(rows)
        self._batch_requests.observe(requests)
        if not ok:
            self._batch_failures.inc()
        elif phases_ns is not None:
            self.statistics.batch(rows, *phases_ns)


class _Without(Collector):
    """A collector's families less those whose name starts with `prefix` (the statistics' shared values)."""

    def __init__(self, collector: Collector, prefix: str) -> None:
        self._collector = collector
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        return (m for m in self._collector.collect() if not m.name.startswith(self._prefix))


def _copier(counter: Counter, counts: Callable[[], Mapping[str, int]]) -> Callable[[], None]:
    """Adds what plain ints counted by outcome since the last call to a shared (multiprocess) counter."""
    copied: dict[str, int] = {}

    def copy() -> None:
        for outcome, n in counts().items():
            if n > copied.get(outcome, 0):
                counter.labels(outcome).inc(n - copied.get(outcome, 0))
                copied[outcome] = n

    return copy


class _SpoolCollector(Collector):
    def __init__(
        self,
        records: Callable[[], Mapping[str, int]],
        volume: Callable[[], Mapping[str, int]],
        usage: Callable[[], int],
        capacity: int,
    ) -> None:
        self._records, self._volume, self._usage, self._capacity = records, volume, usage, capacity

    def collect(self) -> Iterator[Metric]:
        for name, help_text, counts in (
            (PREDICTION_SPOOL_RECORDS, _SPOOL_RECORDS_HELP, self._records()),
            (PREDICTION_SPOOL_BYTES, _SPOOL_BYTES_HELP, self._volume()),
        ):
            family = CounterMetricFamily(name, help_text, labels=("outcome",))
            for outcome, n in counts.items():
                family.add_metric((outcome,), n)
            yield family
        yield GaugeMetricFamily(PREDICTION_SPOOL_USAGE, _SPOOL_USAGE_HELP, value=self._usage())
        yield GaugeMetricFamily(PREDICTION_SPOOL_CAPACITY, _SPOOL_CAPACITY_HELP, value=self._capacity)


class _PredictionLogCollector(Collector):
    def __init__(self, counts: Callable[[], Mapping[str, int]], depth: Callable[[], int]) -> None:
        self._counts = counts
        self._depth = depth

    def collect(self) -> Iterator[Metric]:
        records = CounterMetricFamily(PREDICTION_LOG_RECORDS, _RECORDS_HELP, labels=("outcome",))
        for outcome, n in self._counts().items():
            records.add_metric((outcome,), n)
        yield records
        yield GaugeMetricFamily(PREDICTION_LOG_QUEUE_DEPTH, _QUEUED_HELP, value=self._depth())


class DeviceMetrics:
    """A runtime process's figures (`gateway.serving.device_host`): written into the supervisor's multiprocess
    directory like a worker's, so any worker's /metrics shows them beside the workers' own. Outside `--workers`
    (one process, no such directory) they stay in a registry nobody scrapes."""

    def __init__(self, device: str) -> None:
        r = None if os.environ.get(MULTIPROCESS_ENV) else CollectorRegistry()
        dmv = ("device", "model", "version")
        self.device = device
        self.batch_size = Histogram(
            DEVICE_BATCH_SIZE, "Rows in one runtime call of a runtime process.", dmv, buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_workers = Histogram(
            DEVICE_BATCH_WORKERS,
            "Workers whose batches were merged into one runtime call of a runtime process.",
            dmv,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=r,
        )
        self.queue_wait = Histogram(
            DEVICE_QUEUE_WAIT,
            "Time a worker's batch waited in the runtime process's queue (batches from every worker).",
            dmv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            DEVICE_COMPUTE, "Runtime time for one call of a runtime process.", dmv, buckets=LATENCY_BUCKETS, registry=r
        )
        self.instances = Gauge(
            DEVICE_INSTANCES,
            "Sessions of a version in the device's runtime process (runtime.instances): batches it runs at once.",
            dmv,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.running = Gauge(
            DEVICE_RUNNING,
            "Batches of a version running in the device's runtime process now (sampled each second): against "
            "sluice_device_instances, how busy its sessions are.",
            dmv,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.memory = Gauge(
            DEVICE_HOST_MEMORY,
            "Resident memory of the device's runtime process.",
            ("device",),
            registry=r,
            multiprocess_mode="livesum",
        ).labels(device)
        self.restarts = Gauge(
            DEVICE_HOST_RESTARTS,
            "Times the device's runtime process was restarted after it died.",
            ("device",),
            registry=r,
            multiprocess_mode="max",
        ).labels(device)
