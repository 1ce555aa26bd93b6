"""Per-version request statistics for one analysis window, fed from the hot path.

`record` runs on every request, so it does a dict lookup, a logarithm and a few integer
increments: no per-request allocation, no list of latencies that grows with traffic. The p99
comes from a fixed histogram of log-spaced buckets (1 µs to 60 s, 32 per decade, so a bucket
is about 7.5% wide); the estimate is the bucket's geometric middle, clamped to the smallest and
largest latency seen, so it is within one bucket's width of the true percentile.

`take` hands over the window since the last take and starts a new one: the rollout loop takes
canary and stable once per analysis interval.

Not thread-safe: call it from the event loop's thread (the gateway records there).
"""

from __future__ import annotations

import math

from gateway.control.rollout_model import VersionWindow

LOWEST_S = 1e-6
HIGHEST_S = 60.0
BUCKETS_PER_DECADE = 32
_LOG_LOWEST = math.log(LOWEST_S)
_PER_LOG = BUCKETS_PER_DECADE / math.log(10.0)
# Bucket 0 holds everything at or below LOWEST_S; the last holds everything above HIGHEST_S.
_INNER = math.ceil(math.log10(HIGHEST_S / LOWEST_S) * BUCKETS_PER_DECADE)
_NBUCKETS = _INNER + 2


def bucket_index(latency_s: float) -> int:
    """The histogram bucket a latency falls in (0: <= 1 µs; last: > 60 s)."""
    if not latency_s > LOWEST_S:  # also catches NaN
        return 0
    if latency_s > HIGHEST_S:
        return _NBUCKETS - 1
    return min(int((math.log(latency_s) - _LOG_LOWEST) * _PER_LOG) + 1, _INNER)


def bucket_bounds(index: int) -> tuple[float, float]:
    """The (lower, upper) latency of a bucket; the edge buckets are open-ended (0 and inf)."""
    if index <= 0:
        return 0.0, LOWEST_S
    if index >= _NBUCKETS - 1:
        return HIGHEST_S, math.inf
    lower = LOWEST_S * 10.0 ** ((index - 1) / BUCKETS_PER_DECADE)
    upper = min(LOWEST_S * 10.0 ** (index / BUCKETS_PER_DECADE), HIGHEST_S)
    return lower, upper


class _Accumulator:
    __slots__ = ("counts", "errors", "max_s", "min_s", "requests", "shadow_agreed", "shadow_compared")

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.requests = 0
        self.errors = 0
        self.min_s = math.inf
        self.max_s = -math.inf
        self.shadow_compared = 0
        self.shadow_agreed = 0

    def percentile(self, q: float) -> float | None:
        if not self.requests:
            return None
        rank = max(1, math.ceil(q * self.requests))  # the rank-th smallest latency
        index, seen = 0, self.counts[0]
        while seen < rank:
            index += 1
            seen += self.counts[index]
        lower, upper = bucket_bounds(index)
        if upper == math.inf:
            return self.max_s  # above the top bucket: the largest seen is the only honest figure
        middle = upper if lower == 0.0 else math.sqrt(lower * upper)
        return min(max(middle, self.min_s), self.max_s)


class WindowRecorder:
    """Accumulators per (model, version); `take` returns one version's window and resets it."""

    def __init__(self) -> None:
        self._accs: dict[tuple[str, str], _Accumulator] = {}

    def _acc(self, model: str, version: str) -> _Accumulator:
        key = (model, version)
        acc = self._accs.get(key)
        if acc is None:
            acc = self._accs[key] = _Accumulator()
        return acc

    def record(self, model: str, version: str, ok: bool, latency_s: float) -> None:
        """One request served by the version. `ok=False` only for the version's own failures
        (runtime error, timeout): a caller's bad input says nothing about the canary."""
        acc = self._acc(model, version)
        acc.requests += 1
        if not ok:
            acc.errors += 1
        acc.counts[bucket_index(latency_s)] += 1
        if latency_s < acc.min_s:
            acc.min_s = latency_s
        if latency_s > acc.max_s:
            acc.max_s = latency_s

    def record_shadow(self, model: str, version: str, agreed: bool) -> None:
        """The version ran as a shadow and its answer was compared with the primary's."""
        acc = self._acc(model, version)
        acc.shadow_compared += 1
        if agreed:
            acc.shadow_agreed += 1

    def take(self, model: str, version: str) -> VersionWindow:
        """The window since the last take (empty if nothing was recorded), and start a new one."""
        acc = self._accs.pop((model, version), None)
        if acc is None:
            return VersionWindow()
        return VersionWindow(
            requests=acc.requests,
            errors=acc.errors,
            p99_s=acc.percentile(0.99),
            shadow_compared=acc.shadow_compared,
            shadow_agreed=acc.shadow_agreed,
        )

    def forget(self, model: str, version: str | None = None) -> None:
        """Drop a version's (or every version of a model's) accumulators, e.g. when it is unloaded."""
        if version is not None:
            self._accs.pop((model, version), None)
            return
        for key in [k for k in self._accs if k[0] == model]:
            del self._accs[key]
