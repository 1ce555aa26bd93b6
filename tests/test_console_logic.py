"""The console's pure logic without a gateway: live figures, audit summaries, which actions a phase allows.

Time is injected (`now`); nothing sleeps.
"""

from __future__ import annotations

from datetime import datetime, timezone

from gateway.admin.console import figures
from gateway.admin.console.views import OVERVIEW, RANGES
from gateway.serving.window_stats import WindowSummary


def _published_every_second(now: float, rate: int, seconds: int) -> figures.Series:
    """What a replica sending `rate` req/s publishes: one summary a second, up to `now` (the newest second
    is still arriving, so its summary is already there but the bucket it falls in is not complete)."""
    return [
        (datetime.fromtimestamp(now - s + 0.5, timezone.utc), "1", WindowSummary(requests=rate, buckets={100: rate}))
        for s in range(seconds, 0, -1)
    ]


def _bucketed(series: figures.Series, since: float, bucket_s: float) -> figures.Series:
    """`Store.window_series`'s bucketing of the raw publishes (by `since` and `bucket_s`)."""
    merged: dict[float, WindowSummary] = {}
    for at, _version, summary in series:
        edge = since + ((at.timestamp() - since) // bucket_s) * bucket_s
        merged.setdefault(edge, WindowSummary()).merge(summary)
    return [(datetime.fromtimestamp(e, timezone.utc), "1", s) for e, s in sorted(merged.items())]


def test_live_req_s_counts_complete_buckets_only() -> None:
    """At exactly 10 req/s the live figure is 10, on the models page's buckets and the model page's alike
    (it read 11: the partial newest bucket was counted and the sum divided by 10 s)."""
    for bucket_s in (OVERVIEW[1], RANGES["15m"][1]):
        for offset in (0.0, 0.25, 0.5, 0.75):
            now = 1_000_000.0 + offset
            since = figures.aligned_since(now, 600.0, bucket_s)
            series = _bucketed(_published_every_second(now, 10, 120), since, bucket_s)
            live = figures.live_figures(series, now=now, bucket_s=bucket_s)
            assert live["1"]["rate"] == 10.0, (bucket_s, offset, live)
