"""Window statistics: counts, take-and-reset, and a histogram p99 close to the exact one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.control.rollout_model import VersionWindow
from gateway.serving.window_stats import (
    BUCKETS_PER_DECADE,
    HIGHEST_S,
    LOWEST_S,
    WindowRecorder,
    bucket_bounds,
    bucket_index,
)

BUCKET_RATIO = 10.0 ** (1 / BUCKETS_PER_DECADE)


def test_counts_per_version_and_take_resets() -> None:
    rec = WindowRecorder()
    for i in range(10):
        rec.record("m", "1", ok=i != 3, latency_s=0.01)
    rec.record("m", "2", ok=False, latency_s=0.02)
    rec.record_shadow("m", "2", agreed=True)
    rec.record_shadow("m", "2", agreed=False)
    one = rec.take("m", "1")
    assert (one.requests, one.errors, one.shadow_compared) == (10, 1, 0)
    assert one.p99_s == pytest.approx(0.01)
    two = rec.take("m", "2")
    assert (two.requests, two.errors, two.shadow_compared, two.shadow_agreed) == (1, 1, 2, 1)
    assert rec.take("m", "1") == VersionWindow(), "take starts a new window"
    assert rec.take("other", "9") == VersionWindow()
    assert rec.take("m", "1").p99_s is None


def test_shadow_only_window_has_no_p99() -> None:
    rec = WindowRecorder()
    rec.record_shadow("m", "3", agreed=True)
    window = rec.take("m", "3")
    assert window.requests == 0 and window.p99_s is None and window.shadow_agreed == 1


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
        rec.record("m", "1", ok=True, latency_s=latency)
    p99 = rec.take("m", "1").p99_s
    exact = float(np.percentile(samples, 99))
    assert p99 is not None
    assert exact / BUCKET_RATIO <= p99 <= exact * BUCKET_RATIO, (p99, exact)


def test_p99_never_leaves_the_range_seen() -> None:
    rec = WindowRecorder()
    for latency in (0.0, 0.0, 0.0):
        rec.record("m", "1", ok=True, latency_s=latency)
    assert rec.take("m", "1").p99_s == 0.0
    rec.record("m", "1", ok=True, latency_s=0.123)
    assert rec.take("m", "1").p99_s == 0.123
    rec.record("m", "1", ok=True, latency_s=600.0)
    assert rec.take("m", "1").p99_s == 600.0, "beyond the top bucket the largest seen is reported"


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
        rec.record("m", version, ok=True, latency_s=0.01)
    rec.record("n", "1", ok=True, latency_s=0.01)
    rec.forget("m", "1")
    assert rec.take("m", "1").requests == 0 and rec.take("m", "2").requests == 1
    rec.record("m", "2", ok=True, latency_s=0.01)
    rec.forget("m")
    assert rec.take("m", "2").requests == 0 and rec.take("n", "1").requests == 1
