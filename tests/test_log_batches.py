"""The prediction log per runtime batch: a batch's tensors kept once, its requests' rows expanded by the writer.

What must hold: every request of a batch is stored exactly as it would have been logged alone (the same
bytes, for every dtype, several tensors, several rows, a subset of the outputs, a lone request's arrays
as they are); the log's bounds count records, not batches; a request logged after its batch was taken
still lands; the spool, the writer process and a real store all see the same rows.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from gateway.storage.log_writer import ProcessRowWriter
from gateway.storage.spool import Spool
from gateway.storage.store import Store
from monitors.log_batches import BatchTensors
from monitors.prediction_log import PredictionLog, expand_items, tensors_from_bytes, tensors_to_bytes
from monitors.records import PredictionRow
from tests.databases import Backend
from tests.helpers import Rows, stored_ids_in_write_order, until


def _batch(counts: list[int]) -> BatchTensors:
    """A batch of requests of `counts` rows: two inputs and two outputs of different dtypes and ranks."""
    rows = sum(counts)
    rng = np.random.default_rng(rows)
    inputs: dict[str, np.ndarray] = {
        "x": rng.random((rows, 4), dtype=np.float32),
        "ids": rng.integers(-5, 5, size=(rows, 2, 3), dtype=np.int64),
    }
    outputs = {"score": rng.random((rows, 1)).astype(np.float64), "label": rng.integers(0, 2, rows).astype(np.bool_)}
    return BatchTensors(inputs, outputs, rows, len(counts) == 1)


def _alone(
    tensors: BatchTensors, start: int, stop: int, pid: str, wanted: tuple[str, ...] | None, at: float, latency: float
) -> PredictionRow:
    """The row `PredictionLog.record` stores for the same request logged alone."""
    if tensors.whole:
        inputs, outputs = dict(tensors.inputs), dict(tensors.outputs)
    else:
        inputs = {n: a[start:stop] for n, a in tensors.inputs.items()}
        outputs = {n: a[start:stop] for n, a in tensors.outputs.items()}
    if wanted is not None:
        outputs = {n: outputs[n] for n in wanted}
    return ("m", pid, "1", "stable", at, latency, "ok", tensors_to_bytes(inputs), tensors_to_bytes(outputs))


def _log_batch(plog: PredictionLog, tensors: BatchTensors, counts: list[int], first: int = 0) -> list[str]:
    ids = []
    start = 0
    for n, rows in enumerate(counts):
        pid = f"p{first + n}"
        wanted = ("score",) if n == 1 else None
        assert plog.record_batched(tensors, start, start + rows, pid, "m", "1", "stable", wanted, 0.001 * n)
        ids.append(pid)
        start += rows
    return ids


def _expected(plog_rows: list[PredictionRow], tensors: BatchTensors, counts: list[int]) -> list[PredictionRow]:
    """What each request would have been stored as alone, with the time the log stamped."""
    out = []
    start = 0
    for n, rows in enumerate(counts):
        got = plog_rows[n]
        out.append(_alone(tensors, start, start + rows, f"p{n}", ("score",) if n == 1 else None, got[4], got[5]))
        start += rows
    return out


async def test_each_request_of_a_batch_is_stored_as_if_logged_alone() -> None:
    sink = Rows()
    plog = PredictionLog(sink, batch_size=500)  # type: ignore[arg-type]  # only the writing half is used
    counts = [1, 3, 2, 1]
    tensors = _batch(counts)
    before = time.time()
    _log_batch(plog, tensors, counts)
    assert plog.depth == 4
    await plog.flush()
    assert plog.depth == 0 and plog.counters.written == 4
    assert sink.rows == _expected(sink.rows, tensors, counts)
    assert all(before <= row[4] <= time.time() for row in sink.rows)
    assert [row[5] for row in sink.rows] == [0.0, 0.001, 0.002, 0.003]
    stored = tensors_from_bytes(sink.rows[1][7])
    np.testing.assert_array_equal(stored["ids"], tensors.inputs["ids"][1:4])
    assert set(tensors_from_bytes(sink.rows[1][8])) == {"score"}


async def test_a_lone_request_keeps_its_arrays_as_they_are() -> None:
    """A runtime may answer a batch of one with arrays that have no batch dimension: nothing is sliced."""
    sink = Rows()
    plog = PredictionLog(sink)  # type: ignore[arg-type]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensors = BatchTensors({"x": x}, {"total": np.array(15.0, dtype=np.float32)}, 2, True)
    assert plog.record_batched(tensors, 0, 2, "lone", "m", "1", "stable", None, 0.5)
    await plog.flush()
    ((row),) = sink.rows
    assert row[7] == tensors_to_bytes({"x": x}) and row[8] == tensors_to_bytes({"total": tensors.outputs["total"]})


def test_tensors_without_a_fixed_width_expand_through_the_json_fallback() -> None:
    words = np.array([b"ab", b"c", b"def"], dtype=np.object_).reshape(3, 1)
    scores = np.array([[0.5], [0.25], [1.0]], dtype=np.float32)
    tensors = BatchTensors({"text": words}, {"score": scores}, 3, False)
    plog = PredictionLog(Rows())  # type: ignore[arg-type]
    for i in range(3):
        plog.record_batched(tensors, i, i + 1, f"p{i}", "m", "1", "stable", None, 0.0)
    rows = expand_items(list(plog._queue))
    for i, row in enumerate(rows):
        assert row[7] == tensors_to_bytes({"text": words[i : i + 1]})  # JSON text, as logged alone
        assert row[8] == tensors_to_bytes({"score": scores[i : i + 1]})


async def test_bounds_count_records_not_batches() -> None:
    plog = PredictionLog(Rows(), capacity=5, batch_size=100)  # type: ignore[arg-type]
    tensors = _batch([1] * 8)
    accepted = [plog.record_batched(tensors, i, i + 1, f"p{i}", "m", "1", "stable", None, 0.0, 1.0) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert plog.depth == 5 and plog.counters.dropped == 3
    # The bytes bound holds the batch's arrays once, and refuses a batch that would pass it.
    small = PredictionLog(Rows(), max_bytes=tensors.nbytes + 10)  # type: ignore[arg-type]
    assert small.record_batched(tensors, 0, 1, "a", "m", "1", "stable", None, 0.0)
    assert small.record_batched(tensors, 1, 2, "b", "m", "1", "stable", None, 0.0)  # the same arrays: no more bytes
    assert not small.record_batched(_batch([1, 1]), 0, 1, "c", "m", "1", "stable", None, 0.0)
    assert small.counters.dropped == 1


async def test_a_request_logged_after_its_batch_was_taken_still_lands() -> None:
    """The writer may take a batch's entry before every request of the batch has been logged (they resume one
    after another): the rest open an entry of their own over the same arrays."""
    sink = Rows()
    plog = PredictionLog(sink)  # type: ignore[arg-type]
    counts = [1, 3, 2, 1]
    tensors = _batch(counts)
    assert plog.record_batched(tensors, 0, 1, "p0", "m", "1", "stable", None, 0.0)
    assert plog.record_batched(tensors, 1, 4, "p1", "m", "1", "stable", ("score",), 0.001)
    await plog.flush()
    assert tensors.entry is None and len(sink.rows) == 2
    assert plog.record_batched(tensors, 4, 6, "p2", "m", "1", "stable", None, 0.002)
    assert plog.record_batched(tensors, 6, 7, "p3", "m", "1", "stable", None, 0.003)
    await plog.flush()
    assert plog.counters.written == 4
    assert sink.rows == _expected(sink.rows, tensors, counts)


async def test_the_sample_rate_and_the_id_length_apply_as_for_a_request_logged_alone() -> None:
    plog = PredictionLog(Rows())  # type: ignore[arg-type]
    tensors = _batch([1, 1])
    assert not plog.record_batched(tensors, 0, 1, "x" * 300, "m", "1", "stable", None, 0.0)
    assert plog.counters.failed == 1
    kept = sum(plog.record_batched(tensors, 1, 2, f"id-{i}", "m", "1", "stable", None, 0.0, 0.5) for i in range(400))
    assert 120 < kept < 280 and plog.counters.sampled_out == 400 - kept


async def test_a_batch_of_records_at_once_is_stored_as_each_logged_alone() -> None:
    """`record_batch` (a shadow's copies) stores what `record_batched` stores for each request; ids too long,
    the sample rate and the bounds apply to each record as they would alone."""
    sink = Rows()
    plog = PredictionLog(sink, batch_size=500)  # type: ignore[arg-type]
    counts = [1, 3, 2, 1]
    tensors = _batch(counts)
    slots = [("p0", 0, 1, 0.0), ("x" * 300, 1, 4, 0.001), ("p2", 4, 6, 0.002), ("p3", 6, 7, 0.003)]
    assert plog.record_batch(tensors, "m", "1", "stable", slots) == 3
    assert plog.depth == 3 and plog.counters.failed == 1 and len(plog._queue) == 1  # one entry for the batch
    await plog.flush()
    assert [row[1] for row in sink.rows] == ["p0", "p2", "p3"]
    for row, (start, stop, latency) in zip(sink.rows, [(0, 1, 0.0), (4, 6, 0.002), (6, 7, 0.003)], strict=True):
        assert row == _alone(tensors, start, stop, row[1], None, row[4], latency)

    sampled = PredictionLog(Rows())  # type: ignore[arg-type]
    many = _batch([1] * 400)
    kept = sampled.record_batch(many, "m", "1", "stable", [(f"id-{i}", i, i + 1, 0.0) for i in range(400)], 0.5)
    assert 120 < kept < 280 and sampled.counters.sampled_out == 400 - kept and sampled.depth == kept

    full = PredictionLog(Rows(), capacity=5, batch_size=100)  # type: ignore[arg-type]
    eight = _batch([1] * 8)
    assert full.record_batch(eight, "m", "1", "stable", [(f"p{i}", i, i + 1, 0.0) for i in range(8)]) == 5
    assert full.depth == 5 and full.counters.dropped == 3
    await plog.close()
    assert plog.record_batch(tensors, "m", "1", "stable", [("late", 0, 1, 0.0)]) == 0
    assert plog.counters.dropped == 1


async def test_batches_held_through_an_outage_spill_to_the_spool_as_rows_and_come_back_in_order(
    locked_store: tuple[Store, sqlite3.Connection], tmp_path: Path
) -> None:
    store, blocker = locked_store
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    plog = PredictionLog(store, capacity=40, batch_size=20, flush_interval_s=0.05, spool=spool, probe_interval_s=0.05)
    plog.start()
    blocker.execute("BEGIN IMMEDIATE")
    ids: list[str] = []
    for b in range(25):  # 25 runtime batches of 8 one-row requests: 200 records
        ids += _log_batch(plog, _batch([1] * 8), [1] * 8, first=8 * b)
        await asyncio.sleep(0)
    # the writer finds the database locked, holds its batch and spills the rest
    await until(lambda: plog.sink_unavailable and spool.counters.spooled_records >= 150, timeout=5, what="the spill")
    assert plog.sink_unavailable and plog.counters.dropped == 0
    assert plog.depth <= 48 and spool.counters.spooled_records >= 150  # a batch's entry may pass the bound
    blocker.execute("ROLLBACK")
    await until(lambda: plog.counters.written == 200, timeout=30, what="the write-back", interval=0.05)
    assert stored_ids_in_write_order(store) == ids
    await plog.close()
    spool.close()


async def test_batches_spooled_through_an_outage_are_stored_as_batches_not_a_row_a_request(
    locked_store: tuple[Store, sqlite3.Connection], tmp_path: Path
) -> None:
    """The spool keeps a runtime batch as one item (its tensors once) and the store takes it back as one row:
    written back as rows, each request became a stored batch of one (9.6 against 2.1 µs of the writer's CPU a
    record, and a row a request in the store for good). Every request is still stored as it would be alone."""
    store, blocker = locked_store
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    plog = PredictionLog(store, capacity=40, batch_size=20, flush_interval_s=0.05, spool=spool, probe_interval_s=0.05)
    plog.start()
    blocker.execute("BEGIN IMMEDIATE")
    batches = [_batch([1] * 8) for _ in range(25)]  # 25 runtime batches of 8 one-row requests: 200 records
    ids: list[str] = []
    for b, tensors in enumerate(batches):
        ids += _log_batch(plog, tensors, [1] * 8, first=8 * b)
        await asyncio.sleep(0)
    await until(lambda: plog.sink_unavailable and spool.counters.spooled_records >= 150, timeout=5, what="the spill")
    assert spool.counters.spooled_records >= 150 and plog.counters.dropped == 0
    blocker.execute("ROLLBACK")
    await until(lambda: plog.counters.written == 200, timeout=30, what="the write-back", interval=0.05)
    assert plog.counters.written == 200 and stored_ids_in_write_order(store) == ids
    assert spool.counters.replayed_records == spool.counters.spooled_records
    with store.engine.connect() as conn:
        stored_rows = conn.execute(sa.text("select count(*) from prediction_batches")).scalar_one()
    # A runtime batch is one row; an entry sealed while its batch was still being logged makes two at most.
    assert stored_rows <= 2 * len(batches), f"{stored_rows} rows for {len(batches)} runtime batches"
    stored = {row.id: row for row in store.prediction_records("m", "1")}
    for b, tensors in enumerate(batches):
        for n in range(8):
            got = stored[f"p{8 * b + n}"]
            for name, array in tensors.inputs.items():
                np.testing.assert_array_equal(got.inputs[name], array[n : n + 1])
            wanted = ["score"] if n == 1 else ["score", "label"]
            assert sorted(got.outputs) == sorted(wanted)
            for name in wanted:
                np.testing.assert_array_equal(got.outputs[name], tensors.outputs[name][n : n + 1])
    await plog.close()
    spool.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    s = backend.open()
    s.upgrade()
    return s


async def test_the_writer_process_expands_batches_into_the_store(store: Store) -> None:
    """The real path: frames pickled to `python -m gateway.storage.log_writer`, expanded there, and stored."""
    writer = ProcessRowWriter(store)
    plog = PredictionLog(store, writer=writer)
    counts = [2, 1, 1, 3]
    tensors = _batch(counts)
    _log_batch(plog, tensors, counts)
    await plog.flush()
    await writer.close()
    assert plog.counters.written == 4
    stored = {row.id: row for row in store.prediction_records("m", "1")}
    start = 0
    for n, rows in enumerate(counts):
        got = stored[f"p{n}"]
        for name, array in tensors.inputs.items():
            np.testing.assert_array_equal(got.inputs[name], array[start : start + rows])
            assert got.inputs[name].dtype == array.dtype
        expected_outputs = ["score"] if n == 1 else ["score", "label"]
        assert sorted(got.outputs) == sorted(expected_outputs)
        for name in expected_outputs:
            np.testing.assert_array_equal(got.outputs[name], tensors.outputs[name][start : start + rows])
        assert got.route == "stable" and got.outcome == "ok" and got.latency_s == pytest.approx(0.001 * n)
        start += rows
