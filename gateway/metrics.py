"""Every Prometheus metric Sluice exports, defined here and nowhere else.

Dashboards and alert rules are checked against `METRIC_NAMES`. Children are bound once per
model version (`VersionMetrics`) so the hot path does a dictionary lookup, not a label parse.
Each gateway owns its registry, so several gateways can live in one test process.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REQUESTS = "sluice_requests"
REQUEST_DURATION = "sluice_request_duration_seconds"
QUEUE_WAIT = "sluice_queue_wait_seconds"
COMPUTE_DURATION = "sluice_compute_duration_seconds"
BATCH_SIZE = "sluice_batch_size"
BATCH_REQUESTS = "sluice_batch_requests"
BATCH_FAILURES = "sluice_batch_failures"
QUEUE_DEPTH = "sluice_queue_depth"
INFLIGHT = "sluice_inflight_requests"
MODEL_READY = "sluice_model_ready"
EXECUTION_PROVIDER = "sluice_execution_provider"

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
    INFLIGHT,
    MODEL_READY,
    EXECUTION_PROVIDER,
)

OUTCOMES = ("ok", "invalid", "not_found", "not_ready", "overloaded", "timeout", "error", "draining", "cancelled")

_LATENCY_BUCKETS = (
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
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            QUEUE_WAIT,
            "Time a request waited in its version's batch queue.",
            mv,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            COMPUTE_DURATION, "Runtime time for one batch.", mv, buckets=_LATENCY_BUCKETS, registry=r
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
        self.queue_depth = Gauge(QUEUE_DEPTH, "Requests waiting in the version's batch queue.", mv, registry=r)
        self.inflight = Gauge(INFLIGHT, "Requests being served (queued or running).", mv, registry=r)
        self.model_ready = Gauge(MODEL_READY, "1 when the version is loaded, warmed and serving.", mv, registry=r)
        self.execution_provider = Gauge(
            EXECUTION_PROVIDER,
            "1 for the execution provider that runs the version.",
            (*mv, "provider"),
            registry=r,
        )
        self._versions: dict[tuple[str, str], VersionMetrics] = {}

    def version(self, model: str, version: str) -> VersionMetrics:
        key = (model, version)
        vm = self._versions.get(key)
        if vm is None:
            vm = self._versions[key] = VersionMetrics(self, model, version)
        return vm


class VersionMetrics:
    """Metric children bound to one model version."""

    def __init__(self, m: GatewayMetrics, model: str, version: str) -> None:
        self._m = m
        self.model = model
        self.version = version
        self.queue_wait = m.queue_wait.labels(model, version)
        self._compute = m.compute.labels(model, version)
        self._batch_size = m.batch_size.labels(model, version)
        self._batch_requests = m.batch_requests.labels(model, version)
        self._batch_failures = m.batch_failures.labels(model, version)
        self._queue_depth = m.queue_depth.labels(model, version)
        self.inflight = m.inflight.labels(model, version)
        self._outcomes: dict[tuple[str, str], Any] = {}
        self._durations: dict[str, Any] = {}

    def outcome(self, protocol: str, outcome: str) -> Any:
        key = (protocol, outcome)
        child = self._outcomes.get(key)
        if child is None:
            child = self._outcomes[key] = self._m.requests.labels(self.model, self.version, protocol, outcome)
        return child

    def duration(self, protocol: str) -> Any:
        child = self._durations.get(protocol)
        if child is None:
            child = self._durations[protocol] = self._m.request_duration.labels(self.model, self.version, protocol)
        return child

    def set_ready(self, ready: bool) -> None:
        self._m.model_ready.labels(self.model, self.version).set(1 if ready else 0)

    def set_provider(self, provider: str) -> None:
        self._m.execution_provider.labels(self.model, self.version, provider).set(1)

    def queue_depth(self, depth: int) -> None:
        self._queue_depth.set(depth)

    def batch_done(self, rows: int, requests: int, compute_s: float, ok: bool) -> None:
        self._compute.observe(compute_s)
        self._batch_size.observe(rows)
        self._batch_requests.observe(requests)
        if not ok:
            self._batch_failures.inc()
