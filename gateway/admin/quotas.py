"""Quotas per inference key name: a token bucket each (requests per second, burst), answered 429 over them.

`--inference-quotas "app=50/100,batch=5,*=200/400"`: the key named `app` may make 50 requests a second with
bursts of 100; `batch` 5 a second (burst: the rate); every other key 200 a second. Names, never keys: the
quota and the metrics (`sluice_inference_key_requests_total{key_name,outcome}`) follow the name the key is
listed under, so a rotated key keeps its name's quota and nothing secret reaches Prometheus.

A bucket holds up to `burst` tokens and refills at `rate` a second; a request takes one. An empty bucket
refuses with `QuotaExceeded` carrying when the next token arrives (the Retry-After header, and gRPC's
`retry-after` trailer). O(1) per request: one clock read and a little arithmetic. Buckets live in each
process: with `--workers N` each worker enforces the full quota on the connections the kernel gave it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


class _Bucket:
    __slots__ = ("admitted", "at", "quota", "throttled", "tokens")

    def __init__(self, quota: Quota, now: float, admitted: Any, throttled: Any) -> None:
        self.quota = quota
        self.tokens = quota.burst
        self.at = now
        self.admitted = admitted
        self.throttled = throttled


class QuotaBook:
    def __init__(
        self,
        quotas: dict[str, Quota],
        counter: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`counter`: the `sluice_inference_key_requests_total` family (labels key_name, outcome)."""
        self._quotas = quotas
        self._counter = counter
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, name: str) -> None:
        """Take one request from `name`'s bucket, or raise QuotaExceeded (with the wait for the next one)."""
        now = self._clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._bucket(name, now)
        quota = bucket.quota
        if quota.rate != math.inf:
            bucket.tokens = min(quota.burst, bucket.tokens + (now - bucket.at) * quota.rate)
            bucket.at = now
            if bucket.tokens < 1.0:
                bucket.throttled.inc()
                wait = (1.0 - bucket.tokens) / quota.rate
                raise QuotaExceeded(
                    f"inference key '{name}' is over its quota of {quota.rate:g} requests per second "
                    f"(burst {quota.burst:g}); retry in {wait:.2f} s",
                    retry_after_s=wait,
                )
            bucket.tokens -= 1.0
        bucket.admitted.inc()

    def _bucket(self, name: str, now: float) -> _Bucket:
        quota = self._quotas.get(name) or self._quotas.get(DEFAULT) or Quota(math.inf, math.inf)
        bucket = _Bucket(quota, now, self._counter.labels(name, "admitted"), self._counter.labels(name, "throttled"))
        self._buckets[name] = bucket
        return bucket
