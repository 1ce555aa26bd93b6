"""Window statistics: counts by routing revision, drain-and-reset, summaries that merge across
replicas, and a histogram p99 close to the exact one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.serving.window_stats import (
    BUCKETS_PER_DECADE,
    HIGHEST_S,
    LOWEST_S,
    WindowKey,
    WindowRecorder,
    WindowSummary,
    bucket_bounds,
    bucket_index,
)

BUCKET_RATIO = 10.0 ** (1 / BUCKETS_PER_DECADE)


def drained(rec: WindowRecorder) -> dict[WindowKey, WindowSummary]:
    out: dict[WindowKey, WindowSummary] = {}
    for key, summary in rec.drain():
        out.setdefault(key, WindowSummary()).merge(summary)
    return out


def test_counts_per_version_and_revision_and_drain_resets() -> None:
    rec = WindowRecorder()
    for i in range(10):
        rec.record("m", "1", 7, ok=i != 3, latency_s=0.01)
    rec.record("m", "1", 8, ok=True, latency_s=0.02)
    rec.record("m", "2", 7, ok=False, latency_s=0.02)
    rec.record_shadow("m", "2", 7, agreed=True)
    rec.record_shadow("m", "2", 7, agreed=False)
    got = drained(rec)
    one = got[("m", "1", 7)]
    assert (one.requests, one.errors, one.shadow_compared) == (10, 1, 0)
    assert one.percentile(0.99) == pytest.approx(0.01)
    assert got[("m", "1", 8)].requests == 1, "a request counts under the revision that routed it"
    two = got[("m", "2", 7)]
    assert (two.requests, two.errors, two.shadow_compared, two.shadow_agreed) == (1, 1, 2, 1)
    assert rec.drain() == [], "drain starts afresh"


def test_shadow_only_window_has_no_p99() -> None:
    rec = WindowRecorder()
    rec.record_shadow("m", "3", 1, agreed=True)
    window = drained(rec)[("m", "3", 1)]
    assert window.requests == 0 and window.percentile(0.99) is None and window.shadow_agreed == 1


def test_summaries_of_two_replicas_merge_to_the_summary_of_one() -> None:
    """The same traffic gives the same figures, served by one replica or split over two."""
    latencies = np.random.default_rng(7).lognormal(mean=math.log(0.004), sigma=0.7, size=4_000).tolist()
    one, left, right = WindowRecorder(), WindowRecorder(), WindowRecorder()
    for i, latency in enumerate(latencies):
        ok = i % 97 != 0
        one.record("m", "1", 3, ok, latency)
        (left if i % 3 else right).record("m", "1", 3, ok, latency)
    whole = drained(one)[("m", "1", 3)]
    merged = drained(left)[("m", "1", 3)]
    merged.merge(drained(right)[("m", "1", 3)])
    assert merged == whole
    assert merged.percentile(0.99) == whole.percentile(0.99)


def test_a_publish_that_failed_is_carried_by_the_next_drain() -> None:
    rec = WindowRecorder()
    rec.record("m", "1", 1, ok=True, latency_s=0.01)
    first = rec.drain()
    rec.restore(first)
    rec.record("m", "1", 1, ok=True, latency_s=0.02)
    assert drained(rec)[("m", "1", 1)].requests == 2


def test_batches_count_under_the_newest_revision_served() -> None:
    rec = WindowRecorder()
    rec.record_batch("m", "1", 4)  # before any request: revision 0
    rec.record("m", "1", 5, ok=True, latency_s=0.01)
    rec.record("m", "1", 4, ok=True, latency_s=0.01)  # a late request of an older revision
    rec.record_batch("m", "1", 8)
    got = drained(rec)
    assert (got[("m", "1", 0)].batches, got[("m", "1", 5)].batches, got[("m", "1", 5)].batch_rows) == (1, 1, 8)


@pytest.mark.parametrize(
    "samples",
    [
        np.random.default_rng(1).lognormal(mean=math.log(0.005), sigma=0.8, size=20_000),
        np.random.default_rng(2).exponential(scale=0.03, size=5_000),
        np.random.default_rng(3).uniform(0.0001, 2.0, size=1_000),
        np.concatenate([np.full(9_800, 0.002), np.random.default_rng(4).uniform(0.5, 0.6, size=200)]),
        np.random.default_rng(5).lognormal(mean=math.log(0.2), sigma=0.1, size=150),
    ],
    ids=["lognormal", "exponential", "uniform", "bimodal", "few"],
)
def test_p99_is_within_a_bucket_of_numpy(samples: np.ndarray) -> None:
    rec = WindowRecorder()
    for latency in samples.tolist():
        rec.record("m", "1", 1, ok=True, latency_s=latency)
    p99 = drained(rec)[("m", "1", 1)].percentile(0.99)
    exact = float(np.percentile(samples, 99))
    assert p99 is not None
    assert exact / BUCKET_RATIO <= p99 <= exact * BUCKET_RATIO, (p99, exact)


def test_p99_never_leaves_the_range_seen() -> None:
    rec = WindowRecorder()
    for latency in (0.0, 0.0, 0.0):
        rec.record("m", "1", 1, ok=True, latency_s=latency)
    assert drained(rec)[("m", "1", 1)].percentile(0.99) == 0.0
    rec.record("m", "1", 1, ok=True, latency_s=0.123)
    assert drained(rec)[("m", "1", 1)].percentile(0.99) == 0.123
    rec.record("m", "1", 1, ok=True, latency_s=600.0)
    assert drained(rec)[("m", "1", 1)].percentile(0.99) == 600.0, "beyond the top bucket the largest seen is reported"


def test_buckets_cover_the_range_contiguously() -> None:
    assert bucket_index(0.0) == 0 and bucket_index(-1.0) == 0 and bucket_index(math.nan) == 0
    assert bucket_index(LOWEST_S) == 0
    top = bucket_index(HIGHEST_S)
    assert bucket_index(HIGHEST_S * 1.01) == top + 1
    for index in range(1, top + 1):
        lower, upper = bucket_bounds(index)
        assert lower < upper <= lower * BUCKET_RATIO * (1 + 1e-9)
        assert bucket_index(math.sqrt(lower * upper)) == index
        assert bucket_bounds(index + 1)[0] == pytest.approx(upper)
    for latency in np.geomspace(2e-6, 59.0, 500).tolist():
        lower, upper = bucket_bounds(bucket_index(latency))
        assert lower * (1 - 1e-9) <= latency <= upper * (1 + 1e-9)


def test_forget_drops_a_version_or_a_whole_model() -> None:
    rec = WindowRecorder()
    for version in ("1", "2"):
        rec.record("m", version, 1, ok=True, latency_s=0.01)
    rec.record("n", "1", 1, ok=True, latency_s=0.01)
    rec.forget("m", "1")
    assert set(drained(rec)) == {("m", "2", 1), ("n", "1", 1)}
    rec.record("m", "2", 1, ok=True, latency_s=0.01)
    rec.record("n", "1", 1, ok=True, latency_s=0.01)
    rec.forget("m")
    assert set(drained(rec)) == {("n", "1", 1)}
