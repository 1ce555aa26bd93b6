"""Drift and accuracy jobs: what the monitor's worker process runs, one call per model version.

A job reads its window from the state database itself (its own connection, by URL), runs Evidently
or the accuracy computation, writes the HTML report, and returns a small JSON-able summary. Nothing
large crosses the process boundary and the serving process never holds the GIL for pandas or
Evidently: that is why a drift job leaves the gateway's latency alone (loadtests/bench.py
`--drift-during`). The worker lowers its own CPU priority and imports Evidently once, at start.

The worker never takes a terminal's Ctrl-C (SIGINT to the whole foreground process group): it is started
with SIGINT blocked (`pool_context`; the mask goes through fork and exec, so even the spawn bootstrap and
the import of the parent's main module are covered), and `worker_init` ignores it before anything else.
The serving process stops on that Ctrl-C and ends the pool (`end_pool`): no KeyboardInterrupt traceback
from a worker waiting on its queue or importing Evidently.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.context
import os
import signal
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.storage.store import Store
from monitors import accuracy as accuracy_mod
from monitors.drift import DriftError, DriftOptions, DriftResult, compute, to_frame
from monitors.records import PredictionRecord

log = logging.getLogger(__name__)

OK = "ok"
NO_DATA = "no_data"

_stores: dict[str, Store] = {}


class _NoInterruptProcess(multiprocessing.context.SpawnProcess):
    def start(self) -> None:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class _NoInterruptContext(multiprocessing.context.SpawnContext):
    Process = _NoInterruptProcess


def pool_context() -> multiprocessing.context.SpawnContext:
    """Spawn (never fork: the serving process has threads a fork would copy mid-lock), SIGINT blocked in the
    child from its start until `worker_init` ignores it."""
    return _NoInterruptContext()


def end_pool(pool: Executor) -> None:
    """Shut the pool down at once: cancel what is queued and end the workers (SIGTERM).

    Called when the gateway stops or stops leading: a job then is not worth waiting for (its caller is gone or
    fails; the next run, here or on the new leader, computes it again), and a worker still importing Evidently
    at idle priority on a busy machine held a Ctrl-C's exit up for most of a minute. (Python 3.14's
    `terminate_workers` does the same; before it, the pool's processes are private.)
    """
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        if process.exitcode is None:
            process.terminate()


def worker_init() -> None:
    """Start-up of a worker process: ignore Ctrl-C, the lowest priority there is, then import Evidently.

    SCHED_IDLE (Linux) runs the worker only on a core nothing else wants, and a waking serving
    thread (the event loop, a runtime thread, the log writer) preempts it at once; under plain
    nice 10 the worker still took its CFS share and, in a benchmark on 2 cores with jobs back to
    back, moved the gateway's p99 at 64 connections by about a fifth. Elsewhere: nice 19.

    BLAS (numpy's OpenBLAS, which Evidently's arithmetic goes through) gets one thread. Its pool
    has a thread per core, woken for each operation: even at idle priority, that is one more
    thread on the core the event loop wants, and a switch each time the loop takes it back. With
    jobs back to back on 2 cores, one BLAS thread gave the gateway 4% more req/s and an 8% lower
    p99 than a pool of two (`loadtests.ab --a drift --b drift`, the switch in a's environment).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops on Ctrl-C and ends the pool itself
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # one that came meanwhile is dropped now
    if not _all_threads_idle():
        with contextlib.suppress(OSError):
            os.nice(19)
    with contextlib.suppress(Exception):
        import evidently.presets  # noqa: F401 - seconds of import, paid once here instead of in the first job
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_limits

        # After the imports: the limit reaches the BLAS libraries loaded so far (numpy's, scipy's).
        threadpool_limits(1)  # a drift job must not fan out over the cores the gateway serves on


def _all_threads_idle() -> bool:
    """Every thread of this process under SCHED_IDLE; False where that cannot be done.

    Each thread, not just this one: a policy is per thread, and only threads started later inherit
    it. The worker already has threads when its initializer runs, started by imports: OpenBLAS
    starts its pool when numpy loads, and it does Evidently's arithmetic. Those were left at
    normal priority before.
    """
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is None:
        return False
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    try:
        for tid in threads:
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setscheduler(tid, idle, os.sched_param(0))
    except OSError:
        return False
    return True


def _store(url: str) -> Store:
    store = _stores.get(url)
    if store is None:
        store = _stores[url] = Store(url)
    return store


@dataclass(frozen=True)
class DriftJob:
    db_url: str
    model: str
    version: str
    now: datetime
    window_rows: int
    window_s: float | None
    min_rows: int
    reference_version: str | None
    """Whose first `reference_rows` logged rows are the reference (the stable), when there is no file."""
    reference_rows: int
    reference_file: str | None
    options: DriftOptions = field(default_factory=DriftOptions)
    report_path: str | None = None


@dataclass(frozen=True)
class AccuracyJob:
    db_url: str
    model: str
    version: str
    now: datetime
    window_s: float
    min_labels: int
    task: accuracy_mod.TaskType


def _no_data(reason: str, rows: int = 0, **detail: Any) -> dict[str, Any]:
    return {"status": NO_DATA, "rows": rows, "figures": {}, "detail": {"reason": reason, **detail}, "report": None}


def _read_reference(path: Path) -> Any:
    import pandas as pd

    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def run_drift(job: DriftJob) -> dict[str, Any]:
    store = _store(job.db_url)
    since = job.now - timedelta(seconds=job.window_s) if job.window_s is not None else None
    if job.reference_file is not None:
        reference = _read_reference(Path(job.reference_file))
        reference_desc: dict[str, Any] = {"file": Path(job.reference_file).name}
    elif job.reference_version is not None:
        # Each record holds one row or more: read up to N records, keep those that make the first N rows.
        ref_records = _first_rows(
            store.prediction_records(job.model, job.reference_version, limit=job.reference_rows), job.reference_rows
        )
        reference = to_frame(ref_records, job.options.feature_names)
        reference_desc = {"version": job.reference_version, "first_rows": job.reference_rows}
        if ref_records:
            reference_desc["until"] = ref_records[-1].at.isoformat()
        if len(reference) < job.reference_rows:
            return _no_data(
                f"the reference (stable version {job.reference_version}'s first {job.reference_rows} logged rows) "
                f"has {len(reference)} rows so far",
                reference=reference_desc,
            )
        if job.version == job.reference_version:
            # The stable against its own beginning: only rows after the reference are evidence.
            after = ref_records[-1].at + timedelta(microseconds=1)
            since = after if since is None or since < after else since
    else:
        return _no_data("no reference: name a file in monitoring.drift.reference or set a stable version")
    newest = store.prediction_records(
        job.model, job.version, since=since, until=job.now, limit=job.window_rows, newest=True
    )
    records = _first_rows(newest[::-1], job.window_rows)[::-1]  # the newest records that hold N rows
    current = to_frame(records, job.options.feature_names).tail(job.window_rows).reset_index(drop=True)
    window = {
        "from": records[0].at.isoformat() if records else None,
        "to": records[-1].at.isoformat() if records else None,
        "requests": len(records),
    }
    if len(current) < job.min_rows:
        return _no_data(
            f"{len(current)} rows in the window, fewer than min_rows {job.min_rows}",
            rows=len(current),
            window=window,
            reference=reference_desc,
        )
    try:
        result, snapshot = compute(current, reference, job.options)
    except DriftError as exc:
        return _no_data(str(exc), rows=len(current), window=window, reference=reference_desc)
    report = None
    if job.report_path is not None:
        path = Path(job.report_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(path))
        report = path.name
    return {
        "status": OK,
        "rows": result.rows,
        "figures": drift_figures(result),
        "detail": {"result": result.to_json(), "window": window, "reference": reference_desc},
        "report": report,
    }


def _rows(record: PredictionRecord) -> int:
    first = next(iter(record.inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _first_rows(records: list[PredictionRecord], rows: int) -> list[PredictionRecord]:
    """The shortest prefix of `records` that holds at least `rows` rows (all of them when they hold fewer)."""
    total = 0
    for i, record in enumerate(records):
        total += _rows(record)
        if total >= rows:
            return records[: i + 1]
    return records


def drift_figures(result: DriftResult) -> dict[str, Any]:
    """The flat figures gauges, triggers and rollout checks read."""
    figures: dict[str, Any] = {
        "drift_share": result.drift_share,
        "dataset_drift": result.dataset_drift,
        "drifted_features": result.drifted_features,
        "features": result.features,
        "rows": result.rows,
    }
    for column in result.columns:
        figures[f"feature:{column.column}"] = column.score
    for column in result.predictions:
        figures[f"prediction:{column.column.removeprefix('pred:')}"] = column.score
    return figures


def run_accuracy(job: AccuracyJob) -> dict[str, Any]:
    store = _store(job.db_url)
    since = job.now - timedelta(seconds=job.window_s)
    labeled = [
        p for p in store.labeled_predictions(job.model, job.version, since=since, limit=1_000_000) if p.at < job.now
    ]
    total = store.count_predictions(job.model, job.version, since=since, until=job.now)
    report = accuracy_mod.compute(labeled, total, job.task)
    window = {"from": since.isoformat(), "to": job.now.isoformat()}
    doc = report.to_json()
    if report.n < job.min_labels:
        return _no_data(
            f"{report.n} labeled rows in the window, fewer than min_labels {job.min_labels}",
            rows=report.n,
            window=window,
            result=doc,
        )
    figures = {
        k: doc.get(k)
        for k in ("accuracy", "precision", "recall", "f1", "mae", "rmse", "coverage", "lag_median_s", "lag_p90_s")
        if doc.get(k) is not None
    }
    figures["labeled"] = report.n
    return {
        "status": OK,
        "rows": report.n,
        "figures": figures,
        "detail": {"result": doc, "window": window},
        "report": None,
    }
