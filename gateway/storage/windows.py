"""Replicas' per-version window summaries: published by every replica, taken by the control plane.

A replica publishes what it recorded since its last publish (about once a second), one row per
(model, version, policy revision). Rollout analysis takes a version's untaken rows from its window's
revision on and marks them taken, in the leader's fenced transaction, so each request counts in one
window only, whichever replica served it and however late its row arrived. The rows stay for the
console's charts until they are pruned by age.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, insert, select, update

from gateway.serving.window_stats import WindowKey, WindowSummary
from gateway.storage.engine import Database
from gateway.storage.schema import UTC, utc_now, window_summaries_table

_INF = math.inf


def _row(replica: str, key: WindowKey, s: WindowSummary, at: datetime) -> dict[str, Any]:
    model, version, revision = key
    return {
        "replica": replica,
        "model": model,
        "version": version,
        "revision": revision,
        "at": at,
        "requests": s.requests,
        "errors": s.errors,
        "latency": {str(i): n for i, n in s.buckets.items()},
        "min_s": s.min_s if s.min_s != _INF else None,
        "max_s": s.max_s if s.max_s != -_INF else None,
        "shadow_compared": s.shadow_compared,
        "shadow_agreed": s.shadow_agreed,
        "batches": s.batches,
        "batch_rows": s.batch_rows,
        "taken": False,
    }


def _summary(row: Any) -> WindowSummary:
    return WindowSummary(
        requests=int(row.requests),
        errors=int(row.errors),
        buckets={int(i): int(n) for i, n in row.latency.items()},
        min_s=_INF if row.min_s is None else float(row.min_s),
        max_s=-_INF if row.max_s is None else float(row.max_s),
        shadow_compared=int(row.shadow_compared),
        shadow_agreed=int(row.shadow_agreed),
        batches=int(row.batches),
        batch_rows=int(row.batch_rows),
    )


_COLUMNS = (
    window_summaries_table.c.id,
    window_summaries_table.c.requests,
    window_summaries_table.c.errors,
    window_summaries_table.c.latency,
    window_summaries_table.c.min_s,
    window_summaries_table.c.max_s,
    window_summaries_table.c.shadow_compared,
    window_summaries_table.c.shadow_agreed,
    window_summaries_table.c.batches,
    window_summaries_table.c.batch_rows,
)


def _version_rows(model: str, version: str, min_revision: int) -> list[ColumnElement[bool]]:
    t = window_summaries_table
    return [t.c.model == model, t.c.version == version, t.c.revision >= min_revision]


class WindowData(Database):
    def publish_windows(
        self, replica: str, summaries: Sequence[tuple[WindowKey, WindowSummary]], at: datetime | None = None
    ) -> None:
        """Store one publish of a replica (any replica: this is data, not control state)."""
        rows = [_row(replica, key, s, at or utc_now()) for key, s in summaries if not s.empty]
        if rows:
            with self._write() as conn:
                conn.execute(insert(window_summaries_table), rows)

    def take_windows(
        self,
        model: str,
        version: str,
        *,
        min_revision: int,
        max_revision: int | None = None,
        since: datetime | None = None,
    ) -> WindowSummary:
        """Merge the version's untaken rows with `min_revision <= revision [<= max_revision]` (and `at >=
        since`), mark them taken, and return the sum. A control write: fenced, and part of an open `change()`."""
        t = window_summaries_table
        where = [*_version_rows(model, version, min_revision), t.c.taken.is_(False)]
        if max_revision is not None:
            where.append(t.c.revision <= max_revision)
        if since is not None:
            where.append(t.c.at >= since)
        total = WindowSummary()
        with self._control_write() as conn:
            query = select(*_COLUMNS).where(*where)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            rows = conn.execute(query).all()
            for row in rows:
                total.merge(_summary(row))
            ids = [row.id for row in rows]
            for start in range(0, len(ids), 500):
                conn.execute(update(t).where(t.c.id.in_(ids[start : start + 500])).values(taken=True))
        return total

    def peek_windows(self, model: str, version: str, *, min_revision: int) -> WindowSummary:
        """The sum of the version's rows with `revision >= min_revision`, taken or not, changing nothing: what a
        delivery's shadow gate reads (a rollout that follows still takes the same rows as its evidence)."""
        total = WindowSummary()
        with self._read() as conn:
            for row in conn.execute(select(*_COLUMNS).where(*_version_rows(model, version, min_revision))):
                total.merge(_summary(row))
        return total

    def window_series(
        self, model: str, *, since: datetime, bucket_s: float, version: str | None = None
    ) -> list[tuple[datetime, str, WindowSummary]]:
        """The model's summaries from `since`, summed per version and per `bucket_s` of time (every
        replica and revision together), oldest first: what the console charts. `since`: aware."""
        if since.tzinfo is None or since.utcoffset() is None:
            raise ValueError(f"naive datetime {since!r}: the store takes timezone-aware datetimes only")
        t = window_summaries_table
        query = select(t.c.at, t.c.version, *_COLUMNS[1:]).where(t.c.model == model, t.c.at >= since).order_by(t.c.at)
        if version is not None:
            query = query.where(t.c.version == version)
        with self._read() as conn:
            rows = conn.execute(query).all()
        start = since.timestamp()
        buckets: dict[tuple[float, str], WindowSummary] = {}
        for row in rows:
            edge = start + math.floor((row.at.timestamp() - start) / bucket_s) * bucket_s
            buckets.setdefault((edge, row.version), WindowSummary()).merge(_summary(row))
        return [(datetime.fromtimestamp(edge, UTC), v, s) for (edge, v), s in sorted(buckets.items())]

    def prune_windows(self, older_than: datetime) -> int:
        """Delete summaries older than `older_than` (taken or not: an unjudged window that old is stale)."""
        t = window_summaries_table
        with self._write() as conn:
            return int(conn.execute(delete(t).where(t.c.at < older_than)).rowcount)
