"""The prediction log's sink and its readers: predictions, labels, retention.

The store is the prediction log's sink (`monitors.records.PredictionSink`): predictions and
their labels (migration 2). Tensors are stored as bytes (`monitors.prediction_log.tensors_to_bytes`,
migration 3; rows from before keep their JSON text, and the readers decode both), and handed back
as numpy arrays (`prediction_records`) or in the JSON form (`predictions`, `labeled_predictions`).
Predictions are written by the log's writer (process or thread) in batches through the driver directly
(multi-row `INSERT ... ON CONFLICT DO NOTHING` on SQLite, one array per column unnested on
PostgreSQL): SQLAlchemy's per-row bind processing would cost more GIL time than the rest of the log
together. The table has one index besides its key, (model, version, at): each index costs every
logged request, so pruning goes through that one too.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Dialect,
    Select,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError

from gateway.errors import InvalidInput
from gateway.storage.engine import Database
from gateway.storage.schema import UTC, labels_table, predictions_table, utc_now
from monitors.prediction_log import (
    prediction_rows,
    stored_tensors_to_json,
    tensors_from_bytes,
)
from monitors.records import Label, LabeledPrediction, LabelResult, PredictionRecord, PredictionRow

log = logging.getLogger(__name__)

_PRUNE_CHUNK = 10_000
"""Predictions deleted per transaction when pruning."""
_IN_CHUNK = 500
"""Ids per IN (...) list: far below every engine's limit on bound parameters."""
_MERGE_VERSIONS = 200
"""Model versions up to which pruning by row count merges their index ranges (a UNION ALL arm each)."""
_INSERT_ROWS = 500


class PredictionData(Database):
    # --- prediction log (monitors.records.PredictionSink) ----------------------------------------

    def write_predictions(self, records: Sequence[PredictionRecord]) -> None:
        """Insert a batch in one transaction (see `write_prediction_rows`)."""
        self.write_prediction_rows(prediction_rows(records))

    def write_prediction_rows(self, rows: Sequence[PredictionRow]) -> None:
        """Insert a batch of encoded records (`monitors.prediction_log.prediction_rows`) in one transaction;
        a row whose (model, id, version) is already stored is ignored (a caller that reuses an id keeps
        its first prediction), not an error.

        Encoded rows are what the log's writer process receives: the serving process encodes (cheap,
        and it has the arrays), this side does the rest. The insert goes to the driver directly, as
        multi-row INSERTs: executemany would step the statement once per row, and the sqlite3 driver
        gives the GIL up and takes it back around every step.
        """
        if not rows:
            return
        values = self._prediction_params(rows)
        width = len(predictions_table.columns)
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                # One array per column, unnested by the server: psycopg parses a query's placeholders in
                # Python and caches only short queries, so a 4,500-placeholder VALUES list would cost
                # ~40 µs a row in the parsing alone.
                conn.exec_driver_sql(_INSERT_PREDICTIONS_PG, tuple(values[i::width] for i in range(width)))
                return
            for start in range(0, len(rows), _INSERT_ROWS):
                count = min(_INSERT_ROWS, len(rows) - start)
                conn.exec_driver_sql(
                    _insert_predictions_sql(conn.dialect, count),
                    tuple(values[start * width : (start + count) * width]),
                )

    def _prediction_params(self, rows: Sequence[PredictionRow]) -> list[Any]:
        """The INSERT's parameters for `rows`, row after row, flat: the rows as they are but for the
        time, epoch seconds in the row. SQLite stores it as SQLAlchemy's DateTime does (naive UTC text
        with microseconds), so the queries below read and compare it like any other; and the tensors as
        `bytearray`: Python's sqlite3 binds a bytearray directly but sends every `bytes` through its adapter
        registry first (190 against 490 ns a parameter, the copy included; `loadtests.log_cost`'s database
        step: 3.8 against 4.25 µs a record)."""
        values: list[Any] = []
        if self._engine.dialect.name == "sqlite":
            # The text up to the second is made once per second (rows come in time order).
            second = -1
            prefix = ""
            for model, id_, version, route, at, latency_s, outcome, inputs, outputs in rows:
                whole = int(at)
                micros = round((at - whole) * 1_000_000)
                if micros >= 1_000_000:
                    whole, micros = whole + 1, micros - 1_000_000
                if whole != second:
                    second = whole
                    prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(whole))
                when = "%s.%06d" % (prefix, micros)  # noqa: UP031 - the fastest form here
                values += (model, id_, version, route, when, latency_s, outcome, bytearray(inputs), bytearray(outputs))
        else:
            stamp = datetime.fromtimestamp
            for model, id_, version, route, at, latency_s, outcome, inputs, outputs in rows:
                values += (model, id_, version, route, stamp(at, UTC), latency_s, outcome, inputs, outputs)
        return values

    def prune_predictions(self, *, older_than: datetime | None, keep_rows: int | None) -> int:
        """Delete predictions older than `older_than`, then all but the newest `keep_rows` (across every
        model: the row count bounds the database, not a model's share); labels whose prediction is gone
        go with them. Deletes run in chunks of their own transactions, so a large prune never holds the
        write lock long. Returns the number of predictions deleted.

        There is no index on the time alone (each one costs every logged request): the work goes
        through the (model, version, at) index, one model version at a time.
        """
        if older_than is not None and (older_than.tzinfo is None or older_than.utcoffset() is None):
            raise ValueError(f"naive datetime {older_than!r}: the store takes timezone-aware datetimes only")
        if keep_rows is not None and keep_rows < 0:
            raise InvalidInput(f"keep_rows must be at least 0, got {keep_rows}")
        t = predictions_table
        deleted = 0
        keys = self._prediction_versions()
        if older_than is not None:
            for model, version in keys:
                deleted += self._delete_predictions(
                    (t.c.model == model) & (t.c.version == version) & (t.c.at < older_than)
                )
        if keep_rows is not None:
            cutoff = self._nth_newest_time(keys, keep_rows)
            if cutoff is not None:
                # At most keep_rows stay: rows that tie with the cutoff time go too.
                for model, version in keys:
                    deleted += self._delete_predictions(
                        (t.c.model == model) & (t.c.version == version) & (t.c.at <= cutoff)
                    )
        if deleted:
            lt = labels_table
            orphan = ~exists().where(t.c.model == lt.c.model, t.c.id == lt.c.prediction_id)
            with self._write() as conn:
                conn.execute(delete(lt).where(orphan))
        return deleted

    def _prediction_versions(self) -> list[tuple[str, str]]:
        """Every (model, version) in the log, by a skip scan of the (model, version, at) index: one seek
        per pair, whatever the number of rows."""
        t = predictions_table
        first = select(t.c.model, t.c.version).order_by(t.c.model, t.c.version).limit(1)
        keys: list[tuple[str, str]] = []
        with self._read() as conn:
            row = conn.execute(first).first()
            while row is not None:
                keys.append((row.model, row.version))
                after = tuple_(t.c.model, t.c.version) > tuple_(literal(row.model), literal(row.version))
                row = conn.execute(first.where(after)).first()
        return keys

    def _nth_newest_time(self, keys: list[tuple[str, str]], n: int) -> datetime | None:
        """The time of the (n+1)-th newest prediction across `keys`; None when there are at most n.

        Up to _MERGE_VERSIONS pairs, the newest rows of each are merged from the index (SQLite and
        PostgreSQL both walk the arms of an ordered UNION ALL in step); with more, one ordered scan
        of the table (slower, but pruning runs every few minutes, not per request)."""
        t = predictions_table
        if not keys:
            return None
        query: Select[Any] | CompoundSelect[Any]
        if len(keys) <= _MERGE_VERSIONS:
            arms = [select(t.c.at).where(t.c.model == model, t.c.version == version) for model, version in keys]
            if len(arms) == 1:
                query = arms[0].order_by(t.c.at.desc()).offset(n).limit(1)
            else:
                query = union_all(*arms).order_by(literal_column("at").desc()).offset(n).limit(1)
        else:
            query = select(t.c.at).order_by(t.c.at.desc()).offset(n).limit(1)
        with self._read() as conn:
            at: datetime | None = conn.execute(query).scalar_one_or_none()
        return at

    def _delete_predictions(self, condition: Any, chunk: int = _PRUNE_CHUNK) -> int:
        t = predictions_table
        key = tuple_(t.c.model, t.c.id, t.c.version)
        total = 0
        while True:
            with self._write() as conn:
                victims = select(t.c.model, t.c.id, t.c.version).where(condition).limit(chunk)
                n = conn.execute(delete(t).where(key.in_(victims))).rowcount
            total += n
            if n < chunk:
                return total

    def write_labels(self, model: str, labels: Sequence[Label]) -> LabelResult:
        """Store ground truth for the model's predictions, all or nothing.

        When any id is not a prediction of `model`, nothing is stored and the result lists the unknown
        ids (the HTTP layer answers 404 naming them). A label equal to the stored one (the same JSON)
        is left alone and counted unchanged, so a repeated post is idempotent; a different value
        replaces it. An id given twice in one call: the last one wins.
        """
        latest: dict[str, Label] = {}
        for label in labels:
            latest[label.prediction_id] = label
        encoded = {pid: _canonical_json(label.value, pid) for pid, label in latest.items()}
        for attempt in range(2):
            try:
                return self._write_labels(model, latest, encoded)
            except IntegrityError:  # PostgreSQL: a concurrent post inserted the same new label first
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _write_labels(self, model: str, latest: dict[str, Label], encoded: dict[str, str]) -> LabelResult:
        t, lt = predictions_table, labels_table
        ids = list(latest)
        now = utc_now()
        with self._write() as conn:
            known: set[str] = set()
            stored: dict[str, str] = {}
            for chunk in _chunks(ids, _IN_CHUNK):
                known.update(
                    conn.execute(select(t.c.id).where(t.c.model == model, t.c.id.in_(chunk)).distinct()).scalars()
                )
                for row in conn.execute(
                    select(lt.c.prediction_id, lt.c.value).where(lt.c.model == model, lt.c.prediction_id.in_(chunk))
                ):
                    stored[row.prediction_id] = _canonical_json(row.value, row.prediction_id)
            unknown = tuple(pid for pid in ids if pid not in known)
            if unknown:
                return LabelResult(stored=0, unchanged=0, unknown=unknown)
            new = []
            changed = 0
            unchanged = 0
            for pid, label in latest.items():
                values = {"value": json.loads(encoded[pid]), "at": label.at or now, "received_at": now}
                if pid not in stored:
                    new.append({"model": model, "prediction_id": pid, **values})
                elif stored[pid] == encoded[pid]:
                    unchanged += 1
                else:
                    conn.execute(update(lt).where(lt.c.model == model, lt.c.prediction_id == pid).values(**values))
                    changed += 1
            if new:
                conn.execute(insert(lt), new)
        return LabelResult(stored=len(new) + changed, unchanged=unchanged)

    def labeled_predictions(
        self, model: str, version: str, *, since: datetime | None = None, limit: int = 10_000
    ) -> list[LabeledPrediction]:
        """The version's answered predictions (outcome ok) that have a label, oldest first, from `since`.

        `outputs` are in the JSON form: {"name": {"shape": [...], "datatype": ..., "data": [...]}}.
        """
        t, lt = predictions_table, labels_table
        query = (
            select(t.c.id, t.c.at, t.c.version, t.c.outputs, lt.c.value, lt.c.at.label("labeled_at"))
            .join(lt, (lt.c.model == t.c.model) & (lt.c.prediction_id == t.c.id))
            .where(t.c.model == model, t.c.version == version, t.c.outcome == "ok")
            .order_by(t.c.at, t.c.id)
            .limit(limit)
        )
        if since is not None:
            query = query.where(t.c.at >= since)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            LabeledPrediction(
                id=row.id,
                at=row.at,
                version=row.version,
                outputs=stored_tensors_to_json(row.outputs),
                label=row.value,
                labeled_at=row.labeled_at,
            )
            for row in rows
        ]

    def predictions(
        self,
        model: str,
        *,
        version: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        ids: Sequence[str] | None = None,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        """Stored predictions as dicts (the table's columns; inputs and outputs in the JSON form
        {"name": {"shape": [...], "datatype": ..., "data": [...]}}, NaN and infinities as null), oldest
        first: the window a monitor reads, or the records of some ids."""
        t = predictions_table
        query = select(t).where(t.c.model == model).order_by(t.c.at, t.c.id, t.c.version).limit(limit)
        if version is not None:
            query = query.where(t.c.version == version)
        if since is not None:
            query = query.where(t.c.at >= since)
        if until is not None:
            query = query.where(t.c.at < until)
        if ids is not None:
            query = query.where(t.c.id.in_(list(ids)))
        with self._read() as conn:
            rows = [dict(row) for row in conn.execute(query).mappings()]
        for row in rows:
            row["inputs"] = stored_tensors_to_json(row["inputs"])
            row["outputs"] = stored_tensors_to_json(row["outputs"])
        return rows

    def prediction_records(
        self,
        model: str,
        version: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 10_000,
        newest: bool = False,
        outcome: str | None = "ok",
    ) -> list[PredictionRecord]:
        """One version's stored predictions as records with numpy tensors, oldest first: the window a
        drift job reads. `newest`: the last `limit` rows of the range instead of the first."""
        t = predictions_table
        order = (t.c.at.desc(), t.c.id.desc()) if newest else (t.c.at, t.c.id)
        query = select(t).where(t.c.model == model, t.c.version == version).order_by(*order).limit(limit)
        if outcome is not None:
            query = query.where(t.c.outcome == outcome)
        if since is not None:
            query = query.where(t.c.at >= since)
        if until is not None:
            query = query.where(t.c.at < until)
        with self._read() as conn:
            rows = list(conn.execute(query).all())
        if newest:
            rows.reverse()
        return [
            PredictionRecord(
                id=row.id,
                at=row.at,
                model=row.model,
                version=row.version,
                route=row.route,
                inputs=tensors_from_bytes(row.inputs),
                outputs=tensors_from_bytes(row.outputs),
                latency_s=row.latency_s,
                outcome=row.outcome,
            )
            for row in rows
        ]

    def count_predictions(
        self, model: str, version: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> int:
        """Answered predictions (outcome ok) of one version in [since, until): a window's coverage denominator."""
        t = predictions_table
        query = select(func.count()).where(t.c.model == model, t.c.version == version, t.c.outcome == "ok")
        if since is not None:
            query = query.where(t.c.at >= since)
        if until is not None:
            query = query.where(t.c.at < until)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def labels(self, model: str, ids: Sequence[str] | None = None) -> dict[str, Any]:
        """The model's labels by prediction id (all of them, or those of `ids`)."""
        lt = labels_table
        query = select(lt.c.prediction_id, lt.c.value).where(lt.c.model == model)
        if ids is not None:
            query = query.where(lt.c.prediction_id.in_(list(ids)))
        with self._read() as conn:
            return {row.prediction_id: row.value for row in conn.execute(query)}


_INSERT_PREDICTIONS_PG = (
    "INSERT INTO predictions (model, id, version, route, at, latency_s, outcome, inputs, outputs) "
    "SELECT * FROM unnest(%b::varchar[], %b::varchar[], %b::varchar[], %b::varchar[], %b::timestamptz[], "
    "%b::float8[], %b::varchar[], %b::bytea[], %b::bytea[]) ON CONFLICT DO NOTHING"
)
"""A batch of predictions on PostgreSQL: one array of values per column (in `predictions_table`'s order),
sent in psycopg's binary format (%b): no quoting of text, no hex for bytes."""


@functools.lru_cache(maxsize=64)
def _insert_predictions_sql(dialect: Dialect, rows: int) -> str:
    """INSERT of `rows` predictions in one statement; a key already stored is skipped (ON CONFLICT DO NOTHING)."""
    quote = dialect.identifier_preparer.quote
    columns = [c.name for c in predictions_table.columns]
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    row = f"({', '.join([mark] * len(columns))})"
    return (
        f"INSERT INTO {quote(predictions_table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES {', '.join([row] * rows)} ON CONFLICT DO NOTHING"
    )


def _canonical_json(value: Any, prediction_id: str) -> str:
    """One text per JSON value (keys sorted), to tell a repeated label from a changed one."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"label for prediction '{prediction_id}' is not a JSON value: {exc}") from None


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
