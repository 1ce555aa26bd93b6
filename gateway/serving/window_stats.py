"""Per-version request statistics, fed from the hot path and published as mergeable summaries.

`record` runs on every request, so it does a dict lookup, a logarithm and a few integer
increments: no per-request allocation, no list of latencies that grows with traffic. Latencies go
into a fixed histogram of log-spaced buckets (1 µs to 60 s, 32 per decade, so a bucket is about 7.5%
wide); a percentile is the bucket's geometric middle, clamped to the smallest and largest latency
seen, so it is within one bucket's width of the true one.

Each request counts under the policy revision that routed it (`Routed.revision`), so a rollout's
analysis can take exactly the traffic its step's weights routed, whichever replica served it.
`drain` hands over everything since the last drain as `WindowSummary`s: counts and sparse histogram
buckets, which add up, so the control plane merges the summaries of every replica and gets the
same p99 it would have had from one process.

Not thread-safe: call it from the event loop's thread (the gateway records there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


@dataclass
class WindowSummary:
    """What one version did over some stretch of time: everything in it adds up across replicas."""

    requests: int = 0
    errors: int = 0
    """Requests that failed on the version's side (runtime errors, timeouts), not the caller's 4xx."""
    buckets: dict[int, int] = field(default_factory=dict)
    """Latency histogram, sparse: bucket index -> requests (see `bucket_index`)."""
    min_s: float = math.inf
    max_s: float = -math.inf
    shadow_compared: int = 0
    """Times the version ran as a shadow and its answer was compared with the primary's."""
    shadow_agreed: int = 0
    batches: int = 0
    batch_rows: int = 0

    def merge(self, other: WindowSummary) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.min_s = min(self.min_s, other.min_s)
        self.max_s = max(self.max_s, other.max_s)
        self.shadow_compared += other.shadow_compared
        self.shadow_agreed += other.shadow_agreed
        self.batches += other.batches
        self.batch_rows += other.batch_rows

    @property
    def empty(self) -> bool:
        return not (self.requests or self.shadow_compared or self.batches)

    def percentile(self, q: float) -> float | None:
        """The q-quantile latency (0 < q <= 1), within one bucket's width; None without requests."""
        if not self.requests:
            return None
        rank = max(1, math.ceil(q * self.requests))  # the rank-th smallest latency
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                break
        lower, upper = bucket_bounds(index)
        if upper == math.inf:
            return self.max_s  # above the top bucket: the largest seen is the only honest figure
        middle = upper if lower == 0.0 else math.sqrt(lower * upper)
        return min(max(middle, self.min_s), self.max_s)


class _Accumulator:
    """A summary in the making, with a dense histogram: the hot path only indexes a list."""

    __slots__ = (
        "batch_rows",
        "batches",
        "counts",
        "errors",
        "max_s",
        "min_s",
        "requests",
        "shadow_agreed",
        "shadow_compared",
    )

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.requests = 0
        self.errors = 0
        self.min_s = math.inf
        self.max_s = -math.inf
        self.shadow_compared = 0
        self.shadow_agreed = 0
        self.batches = 0
        self.batch_rows = 0

    def summary(self) -> WindowSummary:
        return WindowSummary(
            requests=self.requests,
            errors=self.errors,
            buckets={i: n for i, n in enumerate(self.counts) if n},
            min_s=self.min_s,
            max_s=self.max_s,
            shadow_compared=self.shadow_compared,
            shadow_agreed=self.shadow_agreed,
            batches=self.batches,
            batch_rows=self.batch_rows,
        )


WindowKey = tuple[str, str, int]
"""(model, version, policy revision)."""


class WindowRecorder:
    """Accumulators per (model, version, revision); `drain` hands them all over and starts afresh."""

    def __init__(self) -> None:
        self._accs: dict[WindowKey, _Accumulator] = {}
        self._latest: dict[tuple[str, str], int] = {}
        """The newest revision each version served under: batches (which mix revisions) count there."""
        self._carried: list[tuple[WindowKey, WindowSummary]] = []

    def _acc(self, model: str, version: str, revision: int) -> _Accumulator:
        key = (model, version, revision)
        acc = self._accs.get(key)
        if acc is None:
            acc = self._accs[key] = _Accumulator()
            if revision >= self._latest.get((model, version), revision):
                self._latest[(model, version)] = revision
        return acc

    def record(self, model: str, version: str, revision: int, ok: bool, latency_s: float) -> None:
        """One request served by the version, routed under policy `revision`. `ok=False` only for the
        version's own failures (runtime error, timeout): a caller's bad input says nothing about it."""
        acc = self._acc(model, version, revision)
        acc.requests += 1
        if not ok:
            acc.errors += 1
        acc.counts[bucket_index(latency_s)] += 1
        if latency_s < acc.min_s:
            acc.min_s = latency_s
        if latency_s > acc.max_s:
            acc.max_s = latency_s

    def record_shadow(self, model: str, version: str, revision: int, agreed: bool) -> None:
        """The version ran as a shadow and its answer was compared with the primary's."""
        self.record_shadows(model, version, revision, 1, int(agreed))

    def record_shadows(self, model: str, version: str, revision: int, compared: int, agreed: int) -> None:
        """`compared` shadow answers of the version (one batch's, routed under `revision`), `agreed` of them
        agreeing with the primary's: one update a batch, not one a copy."""
        acc = self._acc(model, version, revision)
        acc.shadow_compared += compared
        acc.shadow_agreed += agreed

    def record_batch(self, model: str, version: str, rows: int) -> None:
        """One runtime call of the version, counted under the newest revision it served."""
        acc = self._acc(model, version, self._latest.get((model, version), 0))
        acc.batches += 1
        acc.batch_rows += rows

    def drain(self) -> list[tuple[WindowKey, WindowSummary]]:
        """Everything recorded since the last drain, and start anew."""
        accs, self._accs = self._accs, {}
        carried, self._carried = self._carried, []
        return carried + [(key, acc.summary()) for key, acc in accs.items()]

    def restore(self, drained: list[tuple[WindowKey, WindowSummary]]) -> None:
        """Keep summaries a publish could not store: the next drain hands them over again."""
        self._carried.extend(drained)

    def forget(self, model: str, version: str | None = None) -> None:
        """Drop a version's (or every version of a model's) accumulators, e.g. when it is unloaded."""
        for key in [k for k in self._accs if k[0] == model and (version is None or k[1] == version)]:
            del self._accs[key]
