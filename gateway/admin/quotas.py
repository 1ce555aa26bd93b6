"""Quotas per inference key name: a token bucket each (requests per second, burst), answered 429 over them.

`--inference-quotas "app=50/100,batch=5,*=200/400"`: the key named `app` may make 50 requests a second with
bursts of 100; `batch` 5 a second (burst: the rate); every other key 200 a second. Names, never keys: the
quota and the metrics (`sluice_inference_key_requests_total{key_name,outcome}`) follow the name the key is
listed under, so a rotated key keeps its name's quota and nothing secret reaches Prometheus.

A bucket holds up to `burst` tokens and refills at `rate` a second; a request takes one. An empty bucket
refuses with `QuotaExceeded` carrying when the next token arrives (the Retry-After header, and gRPC's
`retry-after` trailer). O(1) per request: one clock read and a little arithmetic (`refill_and_take`).

With `--workers N` the workers of one machine share each name's bucket (`gateway.admin.quota_table`: a
table in shared memory, a few microseconds a request), so a quota holds for the whole gateway, not for
each worker. Elsewhere (one process, each Ray ingress replica) the buckets are the process's own.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import QuotaExceeded

DEFAULT = "*"


class QuotaError(ValueError):
    """The quota setting cannot be parsed; the message names the entry."""


@dataclass(frozen=True)
class Quota:
    rate: float
    """Requests per second, sustained."""
    burst: float
    """Requests allowed at once after a quiet spell (the bucket's size)."""


def parse_quotas(text: str | None) -> dict[str, Quota]:
    """'name=rate[/burst],...' -> {name: Quota}; '*' names the default for keys not listed."""
    quotas: dict[str, Quota] = {}
    for index, item in enumerate((text or "").split(","), start=1):
        item = item.strip()
        if not item:
            continue
        name, sep, spec = item.partition("=")
        rate_text, _, burst_text = spec.partition("/")
        try:
            rate = float(rate_text)
            burst = float(burst_text) if burst_text else max(1.0, rate)
        except ValueError:
            raise QuotaError(f"inference quotas, entry {index}: expected name=rate[/burst], got {item!r}") from None
        if not sep or not name.strip() or not math.isfinite(rate) or rate <= 0 or burst < 1:
            raise QuotaError(
                f"inference quotas, entry {index}: expected name=rate[/burst] with rate > 0 and burst >= 1, "
                f"got {item!r}"
            )
        quotas[name.strip()] = Quota(rate, burst)
    return quotas


def refill_and_take(quota: Quota, tokens: float, at: float, now: float) -> tuple[float, float]:
    """The bucket arithmetic, the one copy of it: a bucket that held `tokens` at `at`, asked for one at `now`.

    Returns (tokens left, wait): wait 0 admits the request; otherwise it is the time until the next token
    and nothing was taken. A `now` before `at` (another process's clock read a moment earlier) adds nothing.
    """
    tokens = min(quota.burst, tokens + max(0.0, now - at) * quota.rate)
    if tokens < 1.0:
        return tokens, (1.0 - tokens) / quota.rate
    return tokens - 1.0, 0.0


class BucketStore(Protocol):
    """Where the buckets' state lives: this process (`LocalBuckets`), or every worker of this machine
    (`gateway.admin.quota_table.SharedBuckets`). Both run `refill_and_take`, on the clock they are given."""

    def take(self, name: str, quota: Quota, clock: Callable[[], float]) -> float:
        """One request from `name`'s bucket: 0 when admitted, else the wait for the next token."""
        ...


class LocalBuckets:
    """The buckets of one process: `sluice serve` with one worker, a Ray ingress replica, a test."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, name: str, quota: Quota, clock: Callable[[], float]) -> float:
        now = clock()
        tokens, at = self._state.get(name) or (quota.burst, now)
        tokens, wait = refill_and_take(quota, tokens, at, now)
        self._state[name] = (tokens, max(at, now))
        return wait


SHARED_ENV = "SLUICE_QUOTA_TABLE"
"""The file of the buckets shared by the workers of `--workers N` (set by the supervisor, gateway.workers)."""


def open_buckets() -> BucketStore:
    """The supervisor's shared table when this process is one of its workers, else buckets of its own."""
    path = os.environ.get(SHARED_ENV)
    if not path:
        return LocalBuckets()
    from gateway.admin.quota_table import SharedBuckets

    return SharedBuckets(path)


class _Counters:
    __slots__ = ("admitted", "quota", "throttled")

    def __init__(self, quota: Quota, admitted: Any, throttled: Any) -> None:
        self.quota = quota
        self.admitted = admitted
        self.throttled = throttled


class QuotaBook:
    def __init__(
        self,
        quotas: dict[str, Quota],
        counter: Any,
        clock: Callable[[], float] = time.monotonic,
        buckets: BucketStore | None = None,
    ) -> None:
        """`counter`: the `sluice_inference_key_requests_total` family (labels key_name, outcome). `buckets`:
        where the buckets live (default: in this process)."""
        self._quotas = quotas
        self._counter = counter
        self._clock = clock
        self._buckets = buckets if buckets is not None else LocalBuckets()
        self._names: dict[str, _Counters] = {}

    def admit(self, name: str) -> None:
        """Take one request from `name`'s bucket, or raise QuotaExceeded (with the wait for the next one)."""
        entry = self._names.get(name) or self._entry(name)
        quota = entry.quota
        if quota.rate != math.inf:
            wait = self._buckets.take(name, quota, self._clock)
            if wait > 0:
                entry.throttled.inc()
                raise QuotaExceeded(
                    f"inference key '{name}' is over its quota of {quota.rate:g} requests per second "
                    f"(burst {quota.burst:g}); retry in {wait:.2f} s",
                    retry_after_s=wait,
                )
        entry.admitted.inc()

    def _entry(self, name: str) -> _Counters:
        quota = self._quotas.get(name) or self._quotas.get(DEFAULT) or Quota(math.inf, math.inf)
        entry = _Counters(quota, self._counter.labels(name, "admitted"), self._counter.labels(name, "throttled"))
        self._names[name] = entry
        return entry
