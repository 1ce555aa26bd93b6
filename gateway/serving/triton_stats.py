"""Triton's statistics extension: per-version figures in the shape of `ModelStatisticsResponse`.

The figures are the gateway's own counters (`gateway.observability.statistics`), summed over every worker;
this module only lays them out as Triton does: `inference_stats` per request (success and fail with
their end-to-end time; queue, compute_input, compute_infer and compute_output for each request whose
batch ran, each request carrying its whole batch's times, as Triton counts them), `batch_stats` per batch
size in rows (successful runtime calls), `inference_count` (rows inferred), `execution_count` (runtime
calls) and `last_inference` (ms since the epoch). The cache figures are zero: Sluice has no response cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.observability.statistics import BATCH_PHASES, PHASES, Duration, VersionTotals

_NONE = VersionTotals()


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def version_statistics(model: str, version: str, totals: VersionTotals | None) -> dict[str, Any]:
    t = totals or _NONE
    stats = {p: _duration(t.phases[p]) for p in PHASES}
    stats |= {"cache_hit": _duration(Duration()), "cache_miss": _duration(Duration())}
    return {
        "name": model,
        "version": version,
        "last_inference": t.last_inference_ms,
        "inference_count": t.inference_count,
        "execution_count": t.execution_count,
        "inference_stats": stats,
        "batch_stats": [
            {"batch_size": size, **{p: _duration(t.batches[size][p]) for p in BATCH_PHASES}}
            for size in sorted(t.batches)
        ],
        "memory_usage": [],
    }


def statistics_response(
    versions: Iterable[tuple[str, str]], totals: Mapping[tuple[str, str], VersionTotals]
) -> dict[str, Any]:
    """`{"model_stats": [...]}` for the given (model, version) pairs, in that order."""
    return {"model_stats": [version_statistics(m, v, totals.get((m, v))) for m, v in versions]}
