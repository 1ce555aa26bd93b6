"""What the console draws, computed from the gateway's own stored data: no Prometheus needed.

Pure functions: window summaries (`Store.window_series`), monitor runs and audit events in, plain
dicts out, which the templates render and `static/console.js` hands to uPlot. A chart is
`{"title", "unit", "x": [epoch s], "series": [{"label", "values"}]}`, with None where there is no
figure (no requests in a bucket has no p99, which is not a p99 of zero).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from gateway.serving.window_stats import WindowSummary

Series = list[tuple[datetime, str, WindowSummary]]
Chart = dict[str, Any]

LIVE_S = 10.0
"""The live figures (req/s, error ratio, p99, batch size) are over the last this many seconds at least."""


def aligned_since(now: float, range_s: float, bucket_s: float) -> float:
    """The start of `range_s` of whole buckets that end a second before `now` (replicas publish about once
    a second, so the newest second is still arriving): every bucket drawn is complete."""
    buckets = max(1, math.floor(range_s / bucket_s))
    return now - 1.0 - buckets * bucket_s


def _edges(since: float, now: float, bucket_s: float) -> list[float]:
    count = max(1, math.floor((now - 1.0 - since) / bucket_s + 1e-9))
    return [since + i * bucket_s for i in range(count)]


def _by_version(series: Series) -> dict[str, dict[float, WindowSummary]]:
    out: dict[str, dict[float, WindowSummary]] = {}
    for at, version, summary in series:
        out.setdefault(version, {})[round(at.timestamp(), 3)] = summary
    return out


def _rate(s: WindowSummary | None, bucket_s: float) -> float:
    return 0.0 if s is None else s.requests / bucket_s


def _error_ratio(s: WindowSummary | None) -> float | None:
    return None if s is None or not s.requests else s.errors / s.requests


def _p99_ms(s: WindowSummary | None) -> float | None:
    p = None if s is None else s.percentile(0.99)
    return None if p is None else p * 1000.0


def _batch(s: WindowSummary | None) -> float | None:
    return None if s is None or not s.batches else s.batch_rows / s.batches


def _agreement(s: WindowSummary | None) -> float | None:
    return None if s is None or not s.shadow_compared else s.shadow_agreed / s.shadow_compared


FIGURES: dict[str, tuple[str, str, Callable[[WindowSummary | None, float], float | None]]] = {
    "rate": ("Requests per second", "req/s", _rate),
    "errors": ("Error ratio", "ratio", lambda s, _b: _error_ratio(s)),
    "p99": ("p99 latency", "ms", lambda s, _b: _p99_ms(s)),
    "batch": ("Mean batch size", "rows", lambda s, _b: _batch(s)),
    "agreement": ("Shadow agreement", "ratio", lambda s, _b: _agreement(s)),
}


def traffic_charts(
    series: Series,
    versions: Sequence[str],
    *,
    since: float,
    now: float,
    bucket_s: float,
    figures: Iterable[str] = ("rate", "errors", "p99", "batch"),
) -> dict[str, Chart]:
    """One chart per figure, a line per version, over whole buckets from `since`."""
    edges = _edges(since, now, bucket_s)
    by_version = _by_version(series)
    edges = _from_first_data(edges, by_version)
    names = list(versions) + sorted(v for v in by_version if v not in versions)
    charts: dict[str, Chart] = {}
    for figure in figures:
        title, unit, fn = FIGURES[figure]
        lines = []
        for version in names:
            points = by_version.get(version, {})
            values = [_round(fn(points.get(round(edge, 3)), bucket_s)) for edge in edges]
            if figure == "agreement" and all(v is None for v in values):
                continue  # only versions that ran as shadows
            lines.append({"label": f"v{version}", "values": values})
        charts[figure] = {"title": title, "unit": unit, "x": edges, "series": lines}
    return charts


MIN_POINTS = 24
"""A chart starts at its first bucket with data (a gateway that just started has no history), but shows
at least this many buckets."""


def _from_first_data(edges: list[float], by_version: dict[str, dict[float, WindowSummary]]) -> list[float]:
    seen = [round(edge, 3) for points in by_version.values() for edge in points]
    if not seen:
        return edges
    first = min(seen)
    keep = next((i for i, edge in enumerate(edges) if round(edge, 3) >= first), len(edges))
    return edges[min(keep, max(0, len(edges) - MIN_POINTS)) :]


def live_figures(series: Series, *, now: float, bucket_s: float) -> dict[str, dict[str, float | None]]:
    """Per version: req/s, error ratio, p99 (ms), mean batch size and shadow agreement over the newest
    whole buckets that cover at least LIVE_S seconds.

    `series` is bucketed from `aligned_since(now, ...)`, so its newest complete bucket ends a second before
    `now`; the bucket after it is still filling and is left out (counted, it added a tenth to req/s)."""
    span = max(LIVE_S, bucket_s)
    end = now - 1.0 + 1e-6
    start = end - span - 2e-6
    merged: dict[str, WindowSummary] = {}
    for at, version, summary in series:
        edge = at.timestamp()
        if edge >= start and edge + bucket_s <= end:
            merged.setdefault(version, WindowSummary()).merge(summary)
    return {
        version: {
            "rate": _round(s.requests / span),
            "errors": _round(_error_ratio(s)),
            "p99": _round(_p99_ms(s)),
            "batch": _round(_batch(s)),
            "agreement": _round(_agreement(s)),
        }
        for version, s in merged.items()
    }


def sparkline(chart: Chart, label: str) -> Chart:
    """One version's line of a chart, for the models page's small charts."""
    lines = [line for line in chart["series"] if line["label"] == label]
    return {**chart, "series": lines, "small": True}


# -- monitor runs --------------------------------------------------------------------------------


def _when(run: dict[str, Any]) -> float:
    at = run["at"]
    return float(at.timestamp()) if isinstance(at, datetime) else float(datetime.fromisoformat(str(at)).timestamp())


def _points_chart(title: str, unit: str, points: dict[str, list[tuple[float, float | None]]]) -> Chart:
    """Irregular points (one per run) on a shared x axis; a line gets None where it has no run."""
    xs = sorted({x for pts in points.values() for x, _ in pts})
    series = []
    for label, pts in points.items():
        at = dict(pts)
        series.append({"label": label, "values": [_round(at.get(x)) for x in xs]})
    return {"title": title, "unit": unit, "x": xs, "series": series, "points": True}


def drift_charts(runs: Sequence[dict[str, Any]]) -> dict[str, Chart]:
    """Drift share per version, and per-feature drift scores for each version, over the stored runs."""
    ok = sorted((r for r in runs if r["kind"] == "drift" and r["status"] == "ok"), key=_when)
    share: dict[str, list[tuple[float, float | None]]] = {}
    features: dict[str, dict[str, list[tuple[float, float | None]]]] = {}
    for run in ok:
        when = _when(run)
        share.setdefault(f"v{run['version']}", []).append((when, run["figures"].get("drift_share")))
        for key, value in run["figures"].items():
            if key.startswith("feature:"):
                per = features.setdefault(str(run["version"]), {})
                per.setdefault(key.removeprefix("feature:"), []).append((when, value))
    charts = {"drift_share": _points_chart("Share of drifted features", "share", share)}
    for version, per in sorted(features.items()):
        charts[f"features_v{version}"] = _points_chart(f"Feature drift scores, v{version}", "score", per)
    return charts


ACCURACY_FIGURES = ("accuracy", "f1", "mae", "rmse", "coverage")


def accuracy_charts(runs: Sequence[dict[str, Any]]) -> dict[str, Chart]:
    """Accuracy (classifiers) or MAE and RMSE (regressors), and label coverage, per version over the runs."""
    ok = sorted((r for r in runs if r["kind"] == "accuracy" and r["status"] == "ok"), key=_when)
    charts: dict[str, Chart] = {}
    titles = {
        "accuracy": ("Accuracy", "ratio"),
        "f1": ("Macro F1", "ratio"),
        "mae": ("MAE", "abs"),
        "rmse": ("RMSE", "abs"),
        "coverage": ("Label coverage", "ratio"),
    }
    for figure in ACCURACY_FIGURES:
        points: dict[str, list[tuple[float, float | None]]] = {}
        for run in ok:
            if run["figures"].get(figure) is not None:
                points.setdefault(f"v{run['version']}", []).append((_when(run), run["figures"][figure]))
        if points:
            charts[figure] = _points_chart(*titles[figure], points)
    return charts


def latest_runs(runs: Sequence[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Each version's newest successful run of `kind` (runs come newest first)."""
    latest: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run["kind"] == kind and run["status"] == "ok":
            latest.setdefault(str(run["version"]), run)
    return latest


# -- rollouts ------------------------------------------------------------------------------------


def timeline(rollout: dict[str, Any]) -> list[dict[str, Any]]:
    """The rollout's steps, each `done`, `current`, `failed` (where a rollback stopped it) or `pending`."""
    steps = rollout["spec"]["steps"]
    phase, step = rollout["phase"], int(rollout["step"])
    out = []
    for index, weight in enumerate(steps):
        if phase == "promoted" or index < step:
            state = "done"
        elif index == step:
            state = {"rolled_back": "failed", "aborted": "failed"}.get(phase, "current")
        else:
            state = "pending"
        out.append({"index": index + 1, "weight": weight, "state": state})
    return out


def analysis_windows(rollout: dict[str, Any], events: Iterable[Any]) -> list[dict[str, Any]]:
    """Every analysis window of this rollout, oldest first, from the audit log: when, the weight it was
    judged at, each check's verdict with its figures, and what followed (step, hold, failure, rollback)."""
    windows = []
    for event in events:
        if event.action != "rollout.analysis" or not isinstance(event.after, dict):
            continue
        after, before = event.after.get("rollout") or {}, (event.before or {}).get("rollout") or {}
        if (
            after.get("started_at") != rollout["started_at"]
            or after.get("spec", {}).get("canary") != (rollout["spec"]["canary"])
        ):
            continue
        windows.append(
            {
                "at": event.at,
                "weight": before.get("weight"),
                "results": after.get("last_results", []),
                "transitions": event.after.get("transitions", []),
            }
        )
    windows.sort(key=lambda w: w["at"])
    return windows


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)
