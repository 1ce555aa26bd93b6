"""Sluice's Grafana dashboards, defined as Python data and written as Grafana 10+ JSON.

`python -m dashboards.build` rewrites `dashboards/*.json`; a test fails when the committed JSON is not
what this module builds, so the two never drift. The panels are plain data (`Panel`, `Target`), so the
live test (tests/test_dashboards_live.py) runs every target of every panel against a real Prometheus
that scraped a real gateway, and the previews (dashboards/previews.py) plot the same queries.

Conventions, which tests/test_dashboards.py checks: every panel has a unit; every range function uses
`$__rate_interval`; every query is scoped by `$job` and `$instance`, and by `$model` (and `$version`)
where the metric has them; the datasource is the `$datasource` variable. A panel about a rare event
(a rollback, a dropped shadow copy) shows its counter or ends in `or on() vector(0)`, so a healthy
gateway fills every panel. GPU panels stay empty where there is no GPU: they are marked `needs_gpu`; the
device placement's panels stay empty unless a version runs in a runtime process: `needs_device`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

ALL = ".+"
"""What Grafana sends for a variable set to All (`allValue`): every non-empty label value."""

JOB = 'job=~"$job", instance=~"$instance"'
MODEL = JOB + ', model=~"$model"'
VERSION = MODEL + ', version=~"$version"'
BAD = 'outcome=~"error|timeout|overloaded|not_ready|draining"'
"""Outcomes that count against availability: the gateway's failures, not the caller's (400, 404, gone away)."""
VALID = 'outcome!~"invalid|not_found|cancelled"'
RI = "$__rate_interval"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    needs_gpu: bool = False
    """Empty unless NVML finds a GPU (the GPU collector exports nothing without one)."""
    needs_device: bool = False
    """Empty unless a version runs in a runtime process of the device placement (with `--workers`)."""
    stack: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    query: str
    """Grafana's Prometheus variable query, `label_values(<series selector>, <label>)`."""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    variables: tuple[Variable, ...]
    rows: tuple[Row, ...]

    @property
    def panels(self) -> list[Panel]:
        return [p for row in self.rows for p in row.panels]


def _vars(*extra: Variable) -> tuple[Variable, ...]:
    return (
        Variable("job", "Job", "label_values(sluice_model_ready, job)"),
        Variable("instance", "Instance", 'label_values(sluice_model_ready{job=~"$job"}, instance)'),
        *extra,
    )


MODEL_VAR = Variable("model", "Model", 'label_values(sluice_model_ready{job=~"$job", instance=~"$instance"}, model)')
VERSION_VAR = Variable(
    "version",
    "Version",
    'label_values(sluice_model_ready{job=~"$job", instance=~"$instance", model=~"$model"}, version)',
)


def rate(metric: str, sel: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{RI}]))"


def quantile(q: float, metric: str, sel: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{RI}])))"


def error_ratio(sel: str, by: str) -> str:
    """Failed share of valid requests; 0 (not a gap) for a version that has had no failure yet."""
    bad = rate("sluice_requests_total", f"{sel}, {BAD}", by)
    valid = rate("sluice_requests_total", f"{sel}, {VALID}", by)
    return f"({bad} or {valid} * 0) / {valid}"


def mean(metric: str, sel: str, by: str) -> str:
    return f"{rate(metric + '_sum', sel, by)} / {rate(metric + '_count', sel, by)}"


MV = "model, version"
LV = "{{model}} v{{version}}"


def overview() -> Dashboard:
    traffic = Row(
        "Traffic and errors (RED)",
        (
            Panel(
                "Requests per second by outcome",
                "Every request the gateway answered, by outcome (ok, invalid, overloaded, timeout, error, ...).",
                "reqps",
                (Target(rate("sluice_requests_total", VERSION, "outcome"), "{{outcome}}"),),
                stack=True,
            ),
            Panel(
                "Requests per second by version",
                "Traffic each model version served (pinned, stable, canary and shadow copies are separate).",
                "reqps",
                (Target(rate("sluice_requests_total", VERSION, MV), LV),),
            ),
            Panel(
                "Error ratio by version",
                "Share of valid requests that failed on the gateway's side (error, timeout, shed, not ready, "
                "draining). Callers' own mistakes (400, 404) and disconnects are left out. The availability "
                "SLO alerts burn on this figure.",
                "percentunit",
                (Target(error_ratio(VERSION, MV), LV),),
            ),
            Panel(
                "Client errors per second",
                "Requests refused as the caller's fault: invalid input (400) or a cancelled call.",
                "reqps",
                (
                    Target(
                        rate("sluice_requests_total", f'{VERSION}, outcome=~"invalid|cancelled"', f"{MV}, outcome")
                        + " or on() vector(0)",
                        LV + " {{outcome}}",
                    ),
                ),
            ),
        ),
    )
    latency = Row(
        "Latency",
        (
            Panel(
                "Request latency p50 / p95 / p99",
                "From decoded request to encoded response, from the request duration histogram.",
                "s",
                tuple(
                    Target(quantile(q, "sluice_request_duration_seconds", VERSION, MV), f"p{int(q * 100)} {LV}")
                    for q in (0.5, 0.95, 0.99)
                ),
                width=24,
            ),
            Panel(
                "Queue wait p50 / p99",
                "Time requests waited in their version's batch queue before their batch ran.",
                "s",
                tuple(
                    Target(quantile(q, "sluice_queue_wait_seconds", VERSION, MV), f"p{int(q * 100)} {LV}")
                    for q in (0.5, 0.99)
                ),
            ),
            Panel(
                "Compute time per batch p50 / p99",
                "Time of one runtime call (one batch), from the compute histogram.",
                "s",
                tuple(
                    Target(quantile(q, "sluice_compute_duration_seconds", VERSION, MV), f"p{int(q * 100)} {LV}")
                    for q in (0.5, 0.99)
                ),
            ),
        ),
    )
    batching = Row(
        "Batching and saturation",
        (
            Panel(
                "Batch size distribution (rows per runtime call)",
                "How many rows each runtime call carried: batches grow with load.",
                "short",
                (Target(f"sum by (le) (increase(sluice_batch_size_bucket{{{VERSION}}}[{RI}]))", "{{le}}"),),
                kind="heatmap",
            ),
            Panel(
                "Mean rows and requests per batch",
                "Mean batch size in rows and in requests merged into one runtime call.",
                "short",
                (
                    Target(mean("sluice_batch_size", VERSION, MV), "rows " + LV),
                    Target(mean("sluice_batch_requests", VERSION, MV), "requests " + LV),
                ),
            ),
            Panel(
                "Queue depth",
                "Requests waiting in each version's batch queue (sampled at scrape).",
                "short",
                (Target(f"sum by ({MV}) (sluice_queue_depth{{{VERSION}}})", LV),),
            ),
            Panel(
                "Queue fill",
                "Queue depth as a share of the queue's capacity: at 100% the version sheds load (429).",
                "percentunit",
                (
                    Target(
                        f"max by ({MV}) (sluice_queue_depth{{{VERSION}}}) / max by ({MV}) "
                        f"(sluice_queue_capacity{{{VERSION}}})",
                        LV,
                    ),
                ),
            ),
            Panel(
                "In-flight requests",
                "Requests queued or running, per version.",
                "short",
                (Target(f"sum by ({MV}) (sluice_inflight_requests{{{VERSION}}})", LV),),
            ),
            Panel(
                "Load shed (429) and timeouts per second",
                "Requests refused because the queue was full (overloaded) or whose deadline passed (timeout).",
                "reqps",
                (
                    Target(
                        rate("sluice_requests_total", f'{VERSION}, outcome=~"overloaded|timeout"', f"{MV}, outcome")
                        + " or on() vector(0)",
                        LV + " {{outcome}}",
                    ),
                ),
            ),
            Panel(
                "Failed runtime calls per second",
                "Batches whose runtime call raised; the batch is split and retried so one bad request fails alone.",
                "ops",
                (Target(rate("sluice_batch_failures_total", VERSION, MV) + " or on() vector(0)", LV),),
            ),
        ),
    )
    versions = Row(
        "Versions",
        (
            Panel(
                "Model ready",
                "1 when the version is loaded, warmed and serving.",
                "bool_yes_no",
                (Target(f"min by ({MV}) (sluice_model_ready{{{VERSION}}})", LV),),
                kind="state-timeline",
            ),
            Panel(
                "Execution provider",
                "The ONNX Runtime execution provider that really runs each version (read back from the session).",
                "none",
                (Target(f"max by ({MV}, provider) (sluice_execution_provider{{{VERSION}}}) == 1", "", instant=True),),
                kind="table",
            ),
        ),
    )
    repository = Row(
        "Model repository",
        (
            Panel(
                "Repository fetches",
                "Version files from an object-store repository: downloaded, reused from the local cache, refused "
                "(not the expected size or SHA-256) or failed (the store, after retries).",
                "ops",
                (
                    Target(
                        f"sum by (outcome) (rate(sluice_repository_fetches_total{{{JOB}}}[{RI}])) or on() vector(0)",
                        "{{outcome}}",
                    ),
                ),
                width=8,
            ),
            Panel(
                "Repository sync errors",
                "Syncs that could not read the repository (the versions serving keep serving); see /admin/repository.",
                "short",
                (
                    Target(
                        f"sum(increase(sluice_repository_sync_errors_total{{{JOB}}}[{RI}])) or on() vector(0)", "errors"
                    ),
                ),
                width=8,
            ),
            Panel(
                "Model cache",
                "Bytes of version files in each gateway's local cache of an object-store repository.",
                "bytes",
                (Target(f"max by (instance) (sluice_model_cache_bytes{{{JOB}}}) or on() vector(0)", "{{instance}}"),),
                width=8,
            ),
        ),
    )
    process = Row(
        "Process",
        (
            Panel(
                "CPU",
                "CPU time of the serving process, as a share of one core (2.0 = two cores busy).",
                "percentunit",
                (Target(f"sum by (instance) (rate(process_cpu_seconds_total{{{JOB}}}[{RI}]))", "{{instance}}"),),
                width=8,
            ),
            Panel(
                "Memory (resident)",
                "Resident set size of the serving process.",
                "bytes",
                (Target(f"sum by (instance) (process_resident_memory_bytes{{{JOB}}})", "{{instance}}"),),
                width=8,
            ),
            Panel(
                "Python GC collections per second",
                "Garbage collections by generation; a full (generation 2) collection stalls the event loop.",
                "ops",
                (
                    Target(
                        f"sum by (instance, generation) (rate(python_gc_collections_total{{{JOB}}}[{RI}]))",
                        "{{instance}} gen {{generation}}",
                    ),
                ),
                width=8,
            ),
        ),
    )
    protection = Row(
        "Protection",
        (
            Panel(
                "Runtime hangs",
                "Runtime calls cancelled by the watchdog (past the model's watchdog.call_timeout_ms), per second.",
                "ops",
                (Target(f"sum by ({MV}) (rate(sluice_runtime_hangs_total{{{VERSION}}}[{RI}])) or on() vector(0)", LV),),
                width=6,
            ),
            Panel(
                "HTTP connections",
                "Open HTTP connections, and those closed to protect the gateway by reason (per second): slow "
                "headers or bodies, oversized headers, the connection limit, idle ones evicted.",
                "short",
                (
                    Target(f"sum by (instance) (sluice_http_connections{{{JOB}}})", "open {{instance}}"),
                    Target(
                        f"sum by (reason) (rate(sluice_http_connections_closed_total{{{JOB}}}[{RI}]))"
                        " or on() vector(0)",
                        "closed: {{reason}}",
                    ),
                ),
                width=6,
            ),
            Panel(
                "Inference keys: admitted and throttled",
                "Requests per second by inference key name (never the key) and quota outcome.",
                "reqps",
                (
                    Target(
                        f"sum by (key_name, outcome) (rate(sluice_inference_key_requests_total{{{JOB}}}[{RI}]))"
                        " or on() vector(0)",
                        "{{key_name}} {{outcome}}",
                    ),
                ),
                width=6,
            ),
            Panel(
                "Key reloads",
                "Reloads of the admin tokens and inference keys (SIGHUP or a changed file) since start; an error "
                "keeps the previous keys.",
                "short",
                (
                    Target(
                        f"sum by (kind, outcome) (sluice_key_reloads_total{{{JOB}}}) or on() vector(0)",
                        "{{kind}} {{outcome}}",
                    ),
                ),
                width=6,
            ),
        ),
    )
    gpu = Row(
        "GPU",
        (
            Panel(
                "GPU utilisation",
                "Share of time a kernel ran on each GPU, by any process (NVML). Empty without a GPU.",
                "percentunit",
                (Target(f"max by (instance, gpu, gpu_name) (sluice_gpu_utilization_ratio{{{JOB}}})", "GPU {{gpu}}"),),
                width=8,
                needs_gpu=True,
            ),
            Panel(
                "GPU memory used and installed",
                "Memory in use on each GPU by every process, against what is installed (NVML).",
                "bytes",
                (
                    Target(f"max by (instance, gpu) (sluice_gpu_memory_used_bytes{{{JOB}}})", "used GPU {{gpu}}"),
                    Target(f"max by (instance, gpu) (sluice_gpu_memory_total_bytes{{{JOB}}})", "total GPU {{gpu}}"),
                ),
                width=8,
                needs_gpu=True,
            ),
            Panel(
                "GPU memory held by this gateway",
                "What the gateway's processes hold on each GPU, by placement: the workers' own sessions, or the "
                "device placement's runtime processes (one copy per GPU); the rest of 'used' is other tenants.",
                "bytes",
                (
                    Target(
                        f"sum by (instance, gpu, placement) (sluice_gpu_process_memory_bytes{{{JOB}}})",
                        "GPU {{gpu}} {{placement}}",
                    ),
                ),
                width=8,
                needs_gpu=True,
            ),
            Panel(
                "Versions by device",
                "Which device each version's runtime is placed on (cpu, cuda:<ordinal>, remote): who shares which GPU.",
                "none",
                (Target(f"max by (device, {MV}) (sluice_runtime_device{{{VERSION}}}) == 1", "", instant=True),),
                kind="table",
                width=24,
            ),
        ),
    )
    device_sel = f"{JOB}, {VERSION}"
    device = Row(
        "Device placement",
        (
            Panel(
                "Rows per runtime call, by device",
                "Mean rows in one call of each runtime process (runtime.placement: device): the batches of every "
                "worker merged. Larger than sluice_batch_size's mean when the merge pays.",
                "short",
                (Target(mean("sluice_device_batch_size", device_sel, f"device, {MV}"), f"{{{{device}}}} {LV}"),),
                width=8,
                needs_device=True,
            ),
            Panel(
                "Sessions busy, by device",
                "Batches running in each runtime process against its sessions (runtime.instances): near the line, "
                "every instance is busy and more instances or devices may pay.",
                "short",
                (
                    Target(
                        f"sum by (device, {MV}) (sluice_device_batches_running{{{device_sel}}})",
                        f"running {{{{device}}}} {LV}",
                    ),
                    Target(
                        f"sum by (device, {MV}) (sluice_device_instances{{{device_sel}}})",
                        f"instances {{{{device}}}} {LV}",
                    ),
                ),
                width=8,
                needs_device=True,
            ),
            Panel(
                "Runtime processes: memory and restarts",
                "Resident memory of each device's runtime process, and how often it was restarted after dying.",
                "bytes",
                (
                    Target(
                        f"max by (instance, device) (sluice_device_host_resident_memory_bytes{{{JOB}}})",
                        "memory {{device}}",
                    ),
                ),
                width=8,
                needs_device=True,
            ),
        ),
    )
    return Dashboard(
        "sluice-overview",
        "Sluice / Overview",
        "Rate, errors and duration per model and version; batching, saturation, the process and its GPUs.",
        _vars(MODEL_VAR, VERSION_VAR),
        (traffic, latency, batching, versions, repository, process, protection, device, gpu),
    )


def rollouts() -> Dashboard:
    side_by_side = Row(
        "Canary against stable",
        (
            Panel(
                "Traffic weight by version",
                "Percent of the model's unpinned traffic each version receives (the canary's step weight).",
                "percent",
                (Target(f"max by ({MV}) (sluice_traffic_weight{{{MODEL}}})", LV),),
            ),
            Panel(
                "Requests per second by version",
                "What each version really served, pinned calls included.",
                "reqps",
                (Target(rate("sluice_requests_total", MODEL, MV), LV),),
            ),
            Panel(
                "Error ratio by version",
                "The figure the error_ratio check compares: failed share of valid requests, per version.",
                "percentunit",
                (Target(error_ratio(MODEL, MV), LV),),
            ),
            Panel(
                "p99 latency by version",
                "The figure the latency_p99_ratio check compares.",
                "s",
                (Target(quantile(0.99, "sluice_request_duration_seconds", MODEL, MV), LV),),
            ),
        ),
    )
    progress = Row(
        "Rollout progress",
        (
            Panel(
                "Rollout phase",
                "The phase of each model's newest rollout (progressing, paused, promoted, rolled_back, aborted).",
                "none",
                (
                    Target(
                        f"max by (model, canary, phase) (sluice_rollout_phase{{{MODEL}}}) == 1",
                        "{{model}} canary v{{canary}}: {{phase}}",
                    ),
                ),
                kind="state-timeline",
            ),
            Panel(
                "Rollout step",
                "Index of the step in force (0-based) of each model's newest rollout.",
                "short",
                (Target(f"max by (model) (sluice_rollout_step{{{MODEL}}})", "{{model}}"),),
            ),
            Panel(
                "Check verdicts (since the gateway started)",
                "Analysis verdicts by check: pass, fail or no_data (too little traffic in the window).",
                "short",
                (Target(f"sum by (check, verdict) (sluice_rollout_checks_total{{{MODEL}}})", "{{check}} {{verdict}}"),),
            ),
            Panel(
                "Rollbacks and promotions (since the gateway started)",
                "Canaries rolled back (by analysis or by hand) and promoted.",
                "short",
                (
                    Target(
                        f"sum by (reason) (sluice_rollbacks_total{{{MODEL}}}) or on() vector(0)",
                        "rolled back ({{reason}})",
                    ),
                    Target(f"sum(sluice_promotions_total{{{MODEL}}}) or on() vector(0)", "promoted"),
                ),
                kind="stat",
            ),
        ),
    )
    shadows = Row(
        "Shadows",
        (
            Panel(
                "Shadow agreement",
                "Share of compared shadow answers that agree with the primary's (argmax, tolerance or equality).",
                "percentunit",
                (Target(f"max by ({MV}) (sluice_shadow_agreement_ratio{{{MODEL}}})", LV),),
            ),
            Panel(
                "Shadow copies per second by outcome",
                "Copies sent to shadow versions and how they ended.",
                "reqps",
                (Target(rate("sluice_shadow_requests_total", MODEL, f"{MV}, outcome"), LV + " {{outcome}}"),),
            ),
            Panel(
                "Shadow copies dropped per second",
                "Copies dropped because the shadow's queue was full: shadows use spare capacity only.",
                "reqps",
                (Target(rate("sluice_shadow_dropped_total", MODEL, MV) + " or on() vector(0)", LV),),
            ),
            Panel(
                "Shadow latency p99 and difference from the primary",
                "The shadow version's inference time, and the median mean-absolute difference of its answers.",
                "s",
                (
                    Target(quantile(0.99, "sluice_shadow_latency_seconds", MODEL, MV), "p99 " + LV),
                    Target(quantile(0.5, "sluice_shadow_abs_diff", MODEL, MV), "median |diff| " + LV),
                ),
            ),
        ),
    )
    return Dashboard(
        "sluice-rollouts",
        "Sluice / Rollouts",
        "Canary against stable side by side, rollout phase and step, check verdicts, rollbacks, shadows.",
        _vars(MODEL_VAR),
        (side_by_side, progress, shadows),
    )


def monitoring() -> Dashboard:
    drift = Row(
        "Drift",
        (
            Panel(
                "Share of drifted features",
                "From each version's last drift run (Evidently): the share of input features judged drifted.",
                "percentunit",
                (Target(f"max by ({MV}) (sluice_drift_share{{{VERSION}}})", LV),),
            ),
            Panel(
                "Dataset drift",
                "1 when the last drift run's share of drifted features reached the model's drift_share.",
                "bool_yes_no",
                (Target(f"max by ({MV}) (sluice_dataset_drift{{{VERSION}}})", LV),),
                kind="state-timeline",
            ),
            Panel(
                "Feature drift score",
                "Each feature's drift statistic in the last run (p-value for K-S and chi-squared: low is drift; "
                "a distance for Wasserstein and the like: high is drift).",
                "none",
                (
                    Target(
                        f"max by ({MV}, feature, method) (sluice_feature_drift_score{{{VERSION}}})",
                        "v{{version}} {{feature}} ({{method}})",
                    ),
                ),
            ),
            Panel(
                "Prediction drift score",
                "Drift statistic of each output (the argmax class for score vectors) in the last run.",
                "none",
                (
                    Target(
                        f"max by ({MV}, output, method) (sluice_prediction_drift_score{{{VERSION}}})",
                        "v{{version}} {{output}} ({{method}})",
                    ),
                ),
            ),
            Panel(
                "Input guard violations",
                "Requests per second that broke an input guard of the model's config.yaml (NaN, infinity, a range, "
                "an unknown category), by feature and action (refused with 400, or served and flagged).",
                "reqps",
                (
                    Target(
                        f"sum by ({MV}, feature, action) (rate(sluice_input_guard_violations_total{{{VERSION}}}[{RI}]))"
                        " or on() vector(0)",
                        "v{{version}} {{feature}} {{action}}",
                    ),
                ),
                width=24,
            ),
        ),
    )
    accuracy = Row(
        "Accuracy and labels",
        (
            Panel(
                "Accuracy, precision, recall, F1",
                "Classification figures over each version's last labelled window (macro averages).",
                "percentunit",
                (
                    Target(
                        f'max by ({MV}, metric) (sluice_accuracy{{{VERSION}, metric=~"accuracy|precision|recall|f1"}})',
                        "v{{version}} {{metric}}",
                    ),
                ),
            ),
            Panel(
                "MAE and RMSE",
                "Regression error over each version's last labelled window, in the model's output units.",
                "none",
                (
                    Target(
                        f'max by ({MV}, metric) (sluice_accuracy{{{VERSION}, metric=~"mae|rmse"}})',
                        LV + " {{metric}}",
                    ),
                ),
            ),
            Panel(
                "Label coverage",
                "Share of the window's predictions that have a label.",
                "percentunit",
                (Target(f"max by ({MV}) (sluice_label_coverage{{{VERSION}}})", LV),),
            ),
            Panel(
                "Label lag (median)",
                "Median time from a prediction to its label, in the last window.",
                "s",
                (Target(f"max by ({MV}) (sluice_label_lag_seconds{{{VERSION}}})", LV),),
            ),
        ),
    )
    log = Row(
        "Prediction log",
        (
            Panel(
                "Prediction records per second by fate",
                "written; dropped (queue full: never blocks inference); failed (write error); sampled_out.",
                "ops",
                (Target(rate("sluice_prediction_log_records_total", JOB, "outcome"), "{{outcome}}"),),
                stack=True,
            ),
            Panel(
                "Records lost per second",
                "Dropped or failed records: zero on a healthy gateway. The PredictionLogLosingRecords alert.",
                "ops",
                (
                    Target(
                        rate("sluice_prediction_log_records_total", f'{JOB}, outcome=~"dropped|failed"', "outcome"),
                        "{{outcome}}",
                    ),
                ),
            ),
            Panel(
                "Prediction log queue depth",
                "Records held in memory for the writer process (the batch being written included).",
                "short",
                (Target(f"sum by (instance) (sluice_prediction_log_queue_depth{{{JOB}}})", "{{instance}}"),),
            ),
            Panel(
                "Prediction spool records per second by fate",
                "The local spool takes what memory cannot hold while the database is away (spooled), writes it "
                "back in order when it returns (replayed); dropped: memory and spool were both full.",
                "ops",
                (Target(rate("sluice_prediction_spool_records_total", JOB, "outcome"), "{{outcome}}"),),
            ),
            Panel(
                "Prediction spool bytes per second by fate",
                "The same in bytes; corrupt: a torn tail (a crash mid-write) skipped when read back.",
                "Bps",
                (Target(rate("sluice_prediction_spool_bytes_total", JOB, "outcome"), "{{outcome}}"),),
            ),
            Panel(
                "Prediction spool on disk against its cap",
                "Bytes the spool holds and its cap (SLUICE_PREDICTION_SPOOL_BYTES), per instance. The "
                "SluicePredictionSpoolFilling alert.",
                "bytes",
                (
                    Target(f"sum by (instance) (sluice_prediction_spool_usage_bytes{{{JOB}}})", "{{instance}}"),
                    Target(f"sum by (instance) (sluice_prediction_spool_capacity_bytes{{{JOB}}})", "cap {{instance}}"),
                ),
            ),
        ),
    )
    jobs = Row(
        "Monitor runs, triggers and webhooks",
        (
            Panel(
                "Monitor runs (since the gateway started)",
                "Drift and accuracy runs by kind and status: ok, no_data (too few rows or labels), error.",
                "short",
                (
                    Target(
                        f"sum by ({MV}, kind, status) (sluice_monitor_runs_total{{{VERSION}}})",
                        LV + " {{kind}} {{status}}",
                    ),
                ),
            ),
            Panel(
                "Monitor run duration (mean since the gateway started)",
                "Wall time of drift and accuracy runs in the monitor's worker process. Runs are minutes apart, "
                "so a rate over a few scrapes would mostly be empty: this is the running mean.",
                "s",
                (
                    Target(
                        f"sum by (model, kind) (sluice_monitor_run_duration_seconds_sum{{{MODEL}}}) / "
                        f"sum by (model, kind) (sluice_monitor_run_duration_seconds_count{{{MODEL}}})",
                        "{{model}} {{kind}}",
                    ),
                ),
            ),
            Panel(
                "Trigger firings (since the gateway started)",
                "Monitor triggers that fired, by rule and action (rollback of a canary, or the retraining hook).",
                "short",
                (
                    Target(
                        f"sum by ({MV}, rule, action) (sluice_trigger_firings_total{{{VERSION}}}) or on() vector(0)",
                        LV + " {{rule}} → {{action}}",
                    ),
                ),
            ),
            Panel(
                "Webhook deliveries (since the gateway started)",
                "Rollout and retraining webhooks by event and outcome: delivered, retried, failed.",
                "short",
                (
                    Target(
                        f"sum by (event, outcome) (sluice_webhook_deliveries_total{{{JOB}}}) or on() vector(0)",
                        "{{event}} {{outcome}}",
                    ),
                ),
            ),
        ),
    )
    return Dashboard(
        "sluice-monitoring",
        "Sluice / Monitoring",
        "Drift, accuracy and labels per version; the prediction log; monitor runs, triggers and webhooks.",
        _vars(MODEL_VAR, VERSION_VAR),
        (drift, accuracy, log, jobs),
    )


DASHBOARDS = (overview, rollouts, monitoring)


# -- Grafana JSON ----------------------------------------------------------------------------------------

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    custom: dict[str, Any] = {}
    if panel.kind == "timeseries":
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        if panel.stack:
            custom["stacking"] = {"mode": "normal", "group": "A"}
    doc: dict[str, Any] = {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {
                "datasource": DATASOURCE,
                "expr": t.expr,
                "legendFormat": t.legend or "__auto",
                "range": not t.instant,
                "instant": t.instant,
                "format": "table" if panel.kind == "table" else "heatmap" if panel.kind == "heatmap" else "time_series",
                "refId": chr(ord("A") + i),
            }
            for i, t in enumerate(panel.targets)
        ],
    }
    if panel.kind == "heatmap":
        doc["options"] = {"calculate": False, "yAxis": {"unit": panel.unit}, "cellGap": 1}
    if panel.kind == "table":
        doc["transformations"] = [{"id": "labelsToFields", "options": {"mode": "columns"}}]
    return doc


def _variable_json(v: Variable) -> dict[str, Any]:
    return {
        "name": v.name,
        "label": v.label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": v.query,
        "query": {"query": v.query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
        "refresh": 2,
        "includeAll": True,
        "allValue": ALL,
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def to_grafana(d: Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana 10+ model JSON (importable, or provisioned from a file)."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in d.rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x, line_h = pid + 1, y + 1, 0, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y, line_h = 0, y + line_h, 0
            panels.append(_panel_json(p, pid, x, y))
            pid, x, line_h = pid + 1, x + p.width, max(line_h, p.height)
        y += line_h
    datasource_var = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
    }
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": ["sluice"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "links": [
            {"type": "dashboards", "tags": ["sluice"], "asDropdown": True, "title": "Sluice", "includeVars": True}
        ],
        "templating": {"list": [datasource_var, *(_variable_json(v) for v in d.variables)]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render(d: Dashboard) -> str:
    return json.dumps(to_grafana(d), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write every dashboard to dashboards/<uid>.json (or to the folder given)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else HERE
    for make in DASHBOARDS:
        d = make()
        (out / f"{d.uid}.json").write_text(render(d))
        print(f"wrote {out / (d.uid + '.json')}: {len(d.panels)} panels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
