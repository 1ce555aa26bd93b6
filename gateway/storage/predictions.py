"""The prediction log's sink and its readers: predictions, labels, retention.

The store is the prediction log's sink (`monitors.records.PredictionSink`): predictions and
their labels (migration 2). A runtime batch's requests are stored as one row, with a key per request
(migration 9, `gateway.storage.prediction_batches`); readers expand the rows each request would have
been alone. Tensors are stored as bytes (`monitors.prediction_log.tensors_to_bytes`, migration 3; rows
from before keep their JSON text, and the readers decode both), and handed back as numpy arrays
(`prediction_records`) or in the JSON form (`predictions`, `labeled_predictions`). Predictions are
written by the log's writer (process or thread) in batches through the driver directly (multi-row
INSERTs on SQLite, one array per column unnested on PostgreSQL): SQLAlchemy's per-row bind processing
would cost more GIL time than the rest of the log together. The batches' table has one index besides
its key, (model, version, at), which windows, counts and pruning go through.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    CompoundSelect,
    Dialect,
    Select,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    tuple_,
    union,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError

from gateway.errors import InvalidInput
from gateway.storage.engine import Database
from gateway.storage.prediction_batches import (
    StoredBatch,
    batch_rows,
    batch_tags,
    slot_ids,
    stored_batches,
    tag_lookup,
    tagged_ids,
    without_slots,
)
from gateway.storage.schema import UTC, labels_table, prediction_batches_table, prediction_keys_table, utc_now
from monitors.log_batches import BatchFrame
from monitors.prediction_log import (
    BATCH_TAG_LENGTH,
    prediction_rows,
    stored_tensors_to_json,
    tensors_from_bytes,
)
from monitors.records import Label, LabeledPrediction, LabelResult, PredictionRecord, PredictionRow

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_PRUNE_CHUNK = 1_000
"""Batches deleted per transaction when pruning."""
_IN_CHUNK = 500
"""Ids per IN (...) list: far below every engine's limit on bound parameters."""
_MERGE_VERSIONS = 200
"""Model versions up to which pruning by row count merges their index ranges (a UNION ALL arm each)."""
_INSERT_ROWS = 500


class PredictionData(Database):
    # --- prediction log (monitors.records.PredictionSink) ----------------------------------------

    def write_predictions(self, records: Sequence[PredictionRecord]) -> None:
        """Insert records in one transaction, each as a batch of one (see `write_log_items`)."""
        self.write_log_items(prediction_rows(records))

    def write_log_items(
        self,
        items: Sequence[PredictionRow | BatchFrame],
        *,
        piece: int | None = None,
        between: Callable[[], None] | None = None,
    ) -> int:
        """Insert what the log hands over in one transaction, in the stored form
        (`gateway.storage.prediction_batches`): a runtime batch as one row, a row as a batch of one, and a key
        per request that its batch's tag does not find. A request whose (model, id, version) is already stored
        is left out (a caller that reuses an id keeps its first prediction; a batch sent again is not stored
        twice), not an error. Returns the requests stored.

        With `piece`, the items go in `piece` at a time, each piece its own statements, and `between()` is
        called between two pieces, inside the transaction: the log's writer process gives its CPU away there
        (`gateway.storage.log_writer.WRITE_PIECE_ITEMS`) without paying a commit for each piece. An exception
        from `between` rolls the whole transaction back.

        The inserts go to the driver directly, as multi-row INSERTs: executemany would step the statement
        once per row, and the sqlite3 driver gives the GIL up and takes it back around every step.
        """
        step = piece or len(items) or 1
        first = stored_batches(items[:step])
        if not first and step >= len(items):
            return 0  # nothing to store: no transaction
        with self._write() as conn:
            stored = self._insert_batches(conn, first)
            for start in range(step, len(items), step):
                if between is not None:
                    between()
                stored += self._insert_batches(conn, stored_batches(items[start : start + step]))
        return stored

    def _insert_batches(self, conn: Any, batches: list[StoredBatch]) -> int:
        """`write_log_items`' inserts of `batches`, in the transaction `conn` holds; the requests stored."""
        if not batches:
            return 0
        batches = self._without_tagged_repeats(conn, batches)
        if not batches:
            return 0
        seqs = self._new_seqs(conn, len(batches))
        postgres = conn.dialect.name == "postgresql"
        values = self._batch_params(batches, seqs, postgres)
        keys: list[Any] = []
        for batch, seq in zip(batches, seqs, strict=True):
            for id_ in batch.keyed:
                keys += (batch.model, id_, batch.version, seq)
        if postgres:
            # One array per column, unnested by the server: psycopg parses a query's placeholders in
            # Python and caches only short queries, so a long VALUES list would cost ~40 µs a row in the
            # parsing alone.
            columns = tuple(values[i::_BATCH_WIDTH] for i in range(_BATCH_WIDTH))
            inserted = conn.exec_driver_sql(_INSERT_BATCHES_PG, columns).rowcount
            keys_pg = tuple(keys[i::4] for i in range(4))
            keyed = conn.exec_driver_sql(_INSERT_KEYS_PG, keys_pg).rowcount if keys else 0
        else:
            inserted = _insert_rows(conn, prediction_batches_table, values, _BATCH_WIDTH, conflicts=True)
            keyed = _insert_rows(conn, prediction_keys_table, keys, 4, conflicts=True)
        present = set(seqs) if inserted == len(batches) else self._present(conn, seqs)
        stored = keyed + sum(b.rows - len(b.keyed) for b, seq in zip(batches, seqs, strict=True) if seq in present)
        if keyed < len(keys) // 4:
            self._drop_repeated(conn, batches, seqs)
        return stored

    def _present(self, conn: Any, seqs: Sequence[int]) -> set[int]:
        """Which of the new batches were stored: a tagged one sent again (its (model, tag, part) taken) was not."""
        b = prediction_batches_table
        present: set[int] = set()
        for part in _chunks(list(seqs), _IN_CHUNK):
            present.update(conn.execute(select(b.c.seq).where(b.c.seq.in_(part))).scalars())
        return present

    def _without_tagged_repeats(self, conn: Any, batches: list[StoredBatch]) -> list[StoredBatch]:
        """The batches without the requests whose id a tagged batch already holds for the same version (stored,
        or earlier in this write): a caller that sends back an id the gateway made, or a tagged batch's requests
        written again one by one (from the spool, after a write that stored part of a batch). A key row would not
        catch these: the tag's way stores none. Costs a query only when an id of the gateway's form needs a key."""
        wanted: dict[tuple[str, str], set[str]] = {}
        for batch in batches:
            if batch.copies:
                continue
            tags = batch_tags(batch.keyed)
            if tags:
                wanted.setdefault((batch.model, batch.version), set()).update(tags)
        if not wanted:
            return batches
        held: set[tuple[str, str, str]] = set()
        for (model, version), tags in wanted.items():
            for chunk in _chunks(sorted(tags), _IN_CHUNK):
                # Answered from the unique index when no batch of this version has the tags (a shadow's copies:
                # their ids name the primary version's batches), and the slots read only where one has. The
                # statement as text: a Core select() built for every write cost more than the lookups.
                sql = _tagged_slots_sql(conn.dialect.paramstyle, len(chunk))
                for tag, slots in conn.exec_driver_sql(sql, (model, version, *chunk)):
                    held.update((model, id_, version) for id_ in tagged_ids(tag, slots))
        if not held and not any(b.tag is not None and (b.model, b.version) in wanted for b in batches):
            return batches  # the common case (a shadow's copies): nothing of these versions holds the tags
        kept: list[StoredBatch] = []
        for batch in batches:
            if (batch.model, batch.version) not in wanted:
                kept.append(batch)
                continue
            keyed = set(batch.keyed)
            model, version = batch.model, batch.version
            ids = slot_ids(batch.slots)
            drop = {i for i, id_ in enumerate(ids) if id_ in keyed and (model, id_, version) in held}
            held.update((model, id_, version) for id_ in ids if id_ not in keyed)  # a tagged batch's
            if not drop:
                kept.append(batch)
            elif len(drop) < batch.rows:
                slots, rows, ok = without_slots(batch.slots, drop)
                left = [id_ for i, id_ in enumerate(ids) if i not in drop and id_ in keyed]
                kept.append(batch._replace(slots=slots, rows=rows, ok=ok, keyed=left))
        return kept

    def _new_seqs(self, conn: Any, count: int) -> list[int]:
        """Keys for `count` new batches, known before the insert so the requests' keys can name them. SQLite:
        the next ones after the largest (the write lock is held since BEGIN IMMEDIATE); PostgreSQL: the
        column's sequence, which concurrent writers share."""
        if conn.dialect.name == "postgresql":
            return list(conn.exec_driver_sql(_NEXT_SEQS_PG, (count,)).scalars())
        # The statement as text: a Core select() costs 134 µs a write in SQLAlchemy against 8 in SQLite (measured).
        last = conn.exec_driver_sql(_LAST_SEQ).scalar_one()
        first = (last or 0) + 1
        return list(range(first, first + count))

    def _batch_params(self, batches: Sequence[StoredBatch], seqs: Sequence[int], postgres: bool) -> list[Any]:
        """The INSERT's parameters for `batches`, row after row, flat. SQLite stores the time as SQLAlchemy's
        DateTime does (naive UTC text with microseconds), so the queries below read and compare it like any
        other; and the tensors as `bytearray`: Python's sqlite3 binds a bytearray directly but sends every
        `bytes` through its adapter registry first (190 against 490 ns a parameter, the copy included)."""
        values: list[Any] = []
        if postgres:
            stamp = datetime.fromtimestamp
            for seq, b in zip(seqs, batches, strict=True):
                values += (
                    seq,
                    b.model,
                    b.version,
                    stamp(b.at, UTC),
                    b.rows,
                    b.ok,
                    b.whole,
                    b.slots,
                    b.inputs,
                    b.outputs,
                    b.tag,
                    b.part,
                )
            return values
        # The text up to the second is made once per second (batches come in time order).
        second = -1
        prefix = ""
        for seq, b in zip(seqs, batches, strict=True):
            whole = int(b.at)
            micros = round((b.at - whole) * 1_000_000)
            if micros >= 1_000_000:
                whole, micros = whole + 1, micros - 1_000_000
            if whole != second:
                second = whole
                prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(whole))
            when = "%s.%06d" % (prefix, micros)  # noqa: UP031 - the fastest form here
            values += (
                seq,
                b.model,
                b.version,
                when,
                b.rows,
                b.ok,
                b.whole,
                b.slots,
                bytearray(b.inputs),
                bytearray(b.outputs),
                b.tag,
                b.part,
            )
        return values

    def _drop_repeated(self, conn: Any, batches: Sequence[StoredBatch], seqs: Sequence[int]) -> None:
        """Take out of the new batches the requests whose key another one holds (stored before, earlier in
        this write, or earlier in the same batch): the first prediction of an id is the one kept. Rare (a
        caller reusing its ids), so it costs a query only then."""
        k, b = prediction_keys_table, prediction_batches_table
        owners: dict[tuple[str, str, str], int] = {}
        wanted: dict[tuple[str, str], set[str]] = {}
        for batch in batches:
            wanted.setdefault((batch.model, batch.version), set()).update(batch.keyed)
        for (model, version), ids in wanted.items():
            for chunk in _chunks(sorted(ids), _IN_CHUNK):
                query = select(k.c.id, k.c.seq).where(k.c.model == model, k.c.version == version, k.c.id.in_(chunk))
                for id_, seq in conn.execute(query):
                    owners[(model, id_, version)] = seq
        for batch, seq in zip(batches, seqs, strict=True):
            keyed = set(batch.keyed)
            seen: set[str] = set()
            drop: set[int] = set()
            for i, id_ in enumerate(slot_ids(batch.slots)):
                if id_ not in keyed:  # found by the batch's tag: never a repeat of a stored one
                    continue
                if id_ in seen or owners.get((batch.model, id_, batch.version)) != seq:
                    drop.add(i)
                seen.add(id_)
            if len(drop) == batch.rows:
                conn.execute(delete(b).where(b.c.seq == seq))
            elif drop:
                slots, rows, ok = without_slots(batch.slots, drop)
                conn.execute(update(b).where(b.c.seq == seq).values(slots=slots, rows=rows, ok=ok))

    def prune_predictions(self, *, older_than: datetime | None, keep_rows: int | None) -> int:
        """Delete predictions older than `older_than`, then all but the newest `keep_rows` (across every
        model: the row count bounds the database, not a model's share); labels whose prediction is gone
        go with them. A runtime batch's requests share its time, so they go together: at most `keep_rows`
        stay. Deletes run in chunks of their own transactions, so a large prune never holds the write lock
        long. Returns the number of predictions deleted.

        There is no index on the time alone (each one costs every logged batch): the work goes through the
        (model, version, at) index, one model version at a time.
        """
        if older_than is not None and (older_than.tzinfo is None or older_than.utcoffset() is None):
            raise ValueError(f"naive datetime {older_than!r}: the store takes timezone-aware datetimes only")
        if keep_rows is not None and keep_rows < 0:
            raise InvalidInput(f"keep_rows must be at least 0, got {keep_rows}")
        b = prediction_batches_table
        deleted = 0
        keys = self._prediction_versions()
        if older_than is not None:
            for model, version in keys:
                deleted += self._delete_batches(model, version, b.c.at < older_than)
        if keep_rows is not None:
            cutoff = self._nth_newest_time(keys, keep_rows)
            if cutoff is not None:
                # At most keep_rows stay: rows that tie with the cutoff time go too.
                for model, version in keys:
                    deleted += self._delete_batches(model, version, b.c.at <= cutoff)
        if deleted:
            k, lt = prediction_keys_table, labels_table
            tagged = exists().where(b.c.model == lt.c.model, _names_batch(b.c.tag, lt.c.prediction_id))
            orphan = ~exists().where(k.c.model == lt.c.model, k.c.id == lt.c.prediction_id) & ~tagged
            with self._write() as conn:
                conn.execute(delete(lt).where(orphan))
        return deleted

    def _prediction_versions(self) -> list[tuple[str, str]]:
        """Every (model, version) in the log, by a skip scan of the (model, version, at) index: one seek
        per pair, whatever the number of rows."""
        b = prediction_batches_table
        first = select(b.c.model, b.c.version).order_by(b.c.model, b.c.version).limit(1)
        keys: list[tuple[str, str]] = []
        with self._read() as conn:
            row = conn.execute(first).first()
            while row is not None:
                keys.append((row.model, row.version))
                after = tuple_(b.c.model, b.c.version) > tuple_(literal(row.model), literal(row.version))
                row = conn.execute(first.where(after)).first()
        return keys

    def _nth_newest_time(self, keys: list[tuple[str, str]], n: int) -> datetime | None:
        """The time of the (n+1)-th newest prediction across `keys`; None when there are at most n.

        Up to _MERGE_VERSIONS pairs, the newest batches of each are merged from the index (SQLite and
        PostgreSQL both walk the arms of an ordered UNION ALL in step), and read only as far as the answer;
        with more, one ordered scan of the table (slower, but pruning runs every few minutes, not per request)."""
        b = prediction_batches_table
        if not keys:
            return None
        query: Select[Any] | CompoundSelect[Any]
        if len(keys) <= _MERGE_VERSIONS:
            arms = [
                select(b.c.at, b.c.rows).where(b.c.model == model, b.c.version == version) for model, version in keys
            ]
            if len(arms) == 1:
                query = arms[0].order_by(b.c.at.desc())
            else:
                query = union_all(*arms).order_by(literal_column("at").desc())
        else:
            query = select(b.c.at, b.c.rows).order_by(b.c.at.desc())
        total = 0
        with self._read() as conn:
            result = conn.execution_options(stream_results=True).execute(query)
            try:
                for at, requests in result:
                    total += requests
                    if total > n:
                        found: datetime = at
                        return found
            finally:
                result.close()
        return None

    def _delete_batches(self, model: str, version: str, condition: Any, chunk: int = _PRUNE_CHUNK) -> int:
        """Delete one version's batches that meet `condition`, and their requests' keys, a chunk of batches a
        transaction; the requests deleted."""
        k, b = prediction_keys_table, prediction_batches_table
        total = 0
        while True:
            with self._write() as conn:
                victims = conn.execute(
                    select(b.c.seq, b.c.rows, b.c.slots)
                    .where(b.c.model == model, b.c.version == version, condition)
                    .limit(chunk)
                ).all()
                seqs = [row.seq for row in victims]
                ids = [id_ for row in victims for id_ in slot_ids(row.slots)]
                for part in _chunks(ids, _IN_CHUNK):
                    conn.execute(
                        delete(k).where(k.c.model == model, k.c.version == version, k.c.id.in_(part), k.c.seq.in_(seqs))
                    )
                for part in _chunks(seqs, _IN_CHUNK):
                    conn.execute(delete(b).where(b.c.seq.in_(part)))
            total += sum(int(row.rows) for row in victims)
            if len(victims) < chunk:
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
        t, lt = prediction_keys_table, labels_table
        ids = list(latest)
        now = utc_now()
        with self._write() as conn:
            known: set[str] = set()
            stored: dict[str, str] = {}
            for chunk in _chunks(ids, _IN_CHUNK):
                known.update(
                    conn.execute(select(t.c.id).where(t.c.model == model, t.c.id.in_(chunk)).distinct()).scalars()
                )
                known.update(self._tagged_known(conn, model, chunk))
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

    def _tagged_known(self, conn: Any, model: str, ids: Sequence[str]) -> set[str]:
        """Those of `ids` that a stored batch of `model` holds by its tag (ids the gateway made for its requests)."""
        b = prediction_batches_table
        tags = tag_lookup(ids)
        known: set[str] = set()
        for chunk in _chunks(sorted(tags), _IN_CHUNK):
            for tag, slots in conn.execute(select(b.c.tag, b.c.slots).where(b.c.model == model, b.c.tag.in_(chunk))):
                known.update(tags[tag].intersection(tagged_ids(tag, slots)))
        return known

    def labeled_predictions(
        self, model: str, version: str, *, since: datetime | None = None, limit: int = 10_000
    ) -> list[LabeledPrediction]:
        """The version's answered predictions (outcome ok) that have a label, oldest first, from `since`.

        `outputs` are in the JSON form: {"name": {"shape": [...], "datatype": ..., "data": [...]}}.
        """
        k, lt, b = prediction_keys_table, labels_table, prediction_batches_table
        keyed = (
            select(k.c.seq, k.c.id, lt.c.value, lt.c.at.label("labeled_at"))
            .join(lt, (lt.c.model == k.c.model) & (lt.c.prediction_id == k.c.id))
            .where(k.c.model == model, k.c.version == version)
        )
        # The version is compared here, not in SQL: SQLite would then walk the (model, version, at) index for every
        # label instead of looking each label's tag up in the tag index.
        tagged = (
            select(b.c.seq, b.c.version, lt.c.prediction_id.label("id"), lt.c.value, lt.c.at.label("labeled_at"))
            .join(b, (b.c.model == lt.c.model) & _names_batch(b.c.tag, lt.c.prediction_id))
            .where(lt.c.model == model)
        )
        labeled: dict[str, tuple[Any, datetime]] = {}
        seqs: set[int] = set()
        with self._read() as conn:
            for row in conn.execute(keyed):
                labeled[row.id] = (row.value, row.labeled_at)
                seqs.add(row.seq)
            for seq, stored_version, id_, value, labeled_at in conn.execute(tagged):
                if stored_version == version:
                    labeled[id_] = (value, labeled_at)
                    seqs.add(seq)
            rows = self._rows_of(conn, sorted(seqs), since=since, only=set(labeled))
        rows = [row for row in rows if row[6] == "ok"]
        rows.sort(key=_row_order)
        return [
            LabeledPrediction(
                id=row[1],
                at=row[4],
                version=row[2],
                outputs=stored_tensors_to_json(row[8]),
                label=labeled[row[1]][0],
                labeled_at=labeled[row[1]][1],
            )
            for row in rows[:limit]
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
        """Stored predictions as dicts (the columns of a prediction: model, id, version, route, at, latency_s,
        outcome, inputs and outputs in the JSON form {"name": {"shape": [...], "datatype": ..., "data": [...]}},
        NaN and infinities as null), oldest first: the window a monitor reads, or the records of some ids."""
        rows = self._stored_rows(model, version=version, since=since, until=until, ids=ids, limit=limit)
        return [
            {
                "model": row[0],
                "id": row[1],
                "version": row[2],
                "route": row[3],
                "at": row[4],
                "latency_s": row[5],
                "outcome": row[6],
                "inputs": stored_tensors_to_json(row[7]),
                "outputs": stored_tensors_to_json(row[8]),
            }
            for row in rows
        ]

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
        rows = self._stored_rows(
            model, version=version, since=since, until=until, limit=limit, newest=newest, outcome=outcome
        )
        return [
            PredictionRecord(
                id=row[1],
                at=row[4],
                model=row[0],
                version=row[2],
                route=row[3],
                inputs=tensors_from_bytes(row[7]),
                outputs=tensors_from_bytes(row[8]),
                latency_s=row[5],
                outcome=row[6],
            )
            for row in rows
        ]

    def _stored_rows(
        self,
        model: str,
        *,
        version: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        ids: Sequence[str] | None = None,
        limit: int = 10_000,
        newest: bool = False,
        outcome: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """The rows of a range, ordered by (at, id, version): the first `limit` (the last, `newest`).

        The batches are read in time order, their counts only, as far as `limit` rows need (and the batches
        that share the last one's time: their rows tie with it), then those batches' slots and tensors."""
        b, k = prediction_batches_table, prediction_keys_table
        conditions = [b.c.model == model]
        if version is not None:
            conditions.append(b.c.version == version)
        if since is not None:
            conditions.append(b.c.at >= since)
        if until is not None:
            conditions.append(b.c.at < until)
        count = b.c.ok if outcome == "ok" else b.c.rows
        enough = outcome in (None, "ok")  # a count that bounds the rows the range gives
        only = None if ids is None else set(ids)
        with self._read() as conn:
            if only is not None:
                keys = select(k.c.seq).where(k.c.model == model, k.c.id.in_(list(only)))
                if version is not None:
                    keys = keys.where(k.c.version == version)
                tags = list(tag_lookup(only))
                if tags:  # and the batches the ids name by their tag (each way its own index)
                    tagged = b.alias("tagged")
                    by_tag = select(tagged.c.seq).where(tagged.c.model == model, tagged.c.tag.in_(tags))
                    found = b.c.seq.in_(union(keys, by_tag))
                else:
                    found = b.c.seq.in_(keys.scalar_subquery())
                # The batches by their keys alone: beside `model = ?`, SQLite would walk the model's index range.
                conditions[0] = found
                enough = False
            order = (b.c.at.desc(), b.c.seq.desc()) if newest else (b.c.at, b.c.seq)
            chosen: list[int] = []
            total = 0
            last: datetime | None = None
            result = conn.execution_options(stream_results=True).execute(
                select(b.c.seq, b.c.at, count).where(*conditions).order_by(*order)
            )
            try:
                for seq, at, requests in result:
                    if enough and total >= limit and at != last:
                        break
                    chosen.append(seq)
                    total += requests
                    last = at
            finally:
                result.close()
            rows = self._rows_of(conn, chosen, only=only)
        if outcome is not None:
            rows = [row for row in rows if row[6] == outcome]
        rows.sort(key=_row_order)
        return rows[len(rows) - limit :] if newest and len(rows) > limit else rows[:limit]

    def _rows_of(
        self, conn: Any, seqs: Sequence[int], *, since: datetime | None = None, only: set[str] | None = None
    ) -> list[tuple[Any, ...]]:
        """The rows of the batches `seqs` (from `since`; `only` those ids), in no particular order."""
        b = prediction_batches_table
        rows: list[tuple[Any, ...]] = []
        for chunk in _chunks(list(seqs), _IN_CHUNK):
            query = select(b.c.model, b.c.version, b.c.at, b.c.whole, b.c.slots, b.c.inputs, b.c.outputs).where(
                b.c.seq.in_(chunk)
            )
            if since is not None:
                query = query.where(b.c.at >= since)
            for model, version, at, whole, slots, inputs, outputs in conn.execute(query):
                rows += batch_rows(model, version, at, whole, slots, inputs, outputs, only=only)
        return rows

    def count_predictions(
        self, model: str, version: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> int:
        """Answered predictions (outcome ok) of one version in [since, until): a window's coverage denominator."""
        b = prediction_batches_table
        query = select(func.coalesce(func.sum(b.c.ok), 0)).where(b.c.model == model, b.c.version == version)
        if since is not None:
            query = query.where(b.c.at >= since)
        if until is not None:
            query = query.where(b.c.at < until)
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


_BATCH_WIDTH = len(prediction_batches_table.columns)

_INSERT_BATCHES_PG = (
    "INSERT INTO prediction_batches (seq, model, version, at, rows, ok, whole, slots, inputs, outputs, tag, part) "
    "SELECT * FROM unnest(%b::bigint[], %b::varchar[], %b::varchar[], %b::timestamptz[], %b::int[], %b::int[], "
    "%b::bool[], %b::bytea[], %b::bytea[], %b::bytea[], %b::varchar[], %b::int[]) ON CONFLICT DO NOTHING"
)
"""Batches on PostgreSQL: one array of values per column (in `prediction_batches_table`'s order), sent in
psycopg's binary format (%b): no quoting of text, no hex for bytes."""

_INSERT_KEYS_PG = (
    "INSERT INTO prediction_keys (model, id, version, seq) "
    "SELECT * FROM unnest(%b::varchar[], %b::varchar[], %b::varchar[], %b::bigint[]) ON CONFLICT DO NOTHING"
)

_LAST_SEQ = "SELECT max(seq) FROM prediction_batches"

_NEXT_SEQS_PG = "SELECT nextval(pg_get_serial_sequence('prediction_batches', 'seq')) FROM generate_series(1, %s)"


@functools.lru_cache(maxsize=64)
def _tagged_slots_sql(paramstyle: str, tags: int) -> str:
    """The tags and slots of a version's batches that hold any of `tags` tags (the unique index's columns)."""
    mark = "?" if paramstyle == "qmark" else "%s"
    return (
        f"SELECT tag, slots FROM prediction_batches WHERE model = {mark} AND version = {mark} "
        f"AND tag IN ({', '.join([mark] * tags)})"
    )


def _insert_rows(conn: Any, table: Table, values: list[Any], width: int, *, conflicts: bool) -> int:
    """Multi-row INSERTs of `values` (rows of `width`, flat), _INSERT_ROWS a statement; the rows stored
    (`conflicts`: a row whose key is taken is skipped)."""
    rows = len(values) // width
    stored = 0
    for start in range(0, rows, _INSERT_ROWS):
        count = min(_INSERT_ROWS, rows - start)
        result = conn.exec_driver_sql(
            _insert_sql(conn.dialect, table, count, conflicts), tuple(values[start * width : (start + count) * width])
        )
        stored += result.rowcount
    return stored


@functools.lru_cache(maxsize=64)
def _insert_sql(dialect: Dialect, table: Table, rows: int, conflicts: bool) -> str:
    """INSERT of `rows` rows of `table` in one statement (`conflicts`: ON CONFLICT DO NOTHING)."""
    quote = dialect.identifier_preparer.quote
    columns = [c.name for c in table.columns]
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    row = f"({', '.join([mark] * len(columns))})"
    tail = " ON CONFLICT DO NOTHING" if conflicts else ""
    return (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES {', '.join([row] * rows)}{tail}"
    )


def _names_batch(tag: Any, prediction_id: Any) -> Any:
    """SQL: the id is of the gateway's form for the batch with this tag (`monitors.prediction_log.batch_request_id`):
    the tag, then '-'. The tag's comparison is the one an index on it serves."""
    return and_(
        tag == func.substr(prediction_id, 1, BATCH_TAG_LENGTH),
        func.substr(prediction_id, BATCH_TAG_LENGTH + 1, 1) == "-",
    )


def _row_order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Rows in time order, then by id and version (a time shared by a batch's requests, or by two batches)."""
    return (row[4], row[1], row[2])


def _canonical_json(value: Any, prediction_id: str) -> str:
    """One text per JSON value (keys sorted), to tell a repeated label from a changed one."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"label for prediction '{prediction_id}' is not a JSON value: {exc}") from None


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
