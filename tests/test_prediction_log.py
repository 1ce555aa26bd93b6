"""The prediction log: a bounded, batched, never-blocking queue in front of the real store.

Unit tests drive `PredictionLog` against a real `Store` (SQLite, and PostgreSQL through the
`backend` fixture for the storage features); the end-to-end tests run `sluice serve`, load it
over HTTP and gRPC, send SIGTERM while requests are in flight, and read the state database it
leaves behind.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import sqlalchemy as sa
import tritonclient.grpc as grpcclient
from prometheus_client import generate_latest

from gateway.cli.demo import build_demo_repository, build_reference_mlp
from gateway.observability.metrics import GatewayMetrics
from gateway.storage import predictions as predictions_mod
from gateway.storage.spool import MAGIC, Spool
from gateway.storage.spool import frame as spool_frame
from gateway.storage.store import Store
from monitors.log_batches import BatchFrame
from monitors.prediction_log import (
    MAX_ID_LENGTH,
    TENSORS_V1,
    PredictionLog,
    Retention,
    expand_items,
    new_prediction_id,
    prediction_rows,
    sampled,
    stored_tensors_to_json,
    tensors_from_bytes,
    tensors_from_json,
    tensors_to_bytes,
    tensors_to_json,
)
from monitors.records import Label, PredictionRecord, PredictionRow
from tests.databases import Backend
from tests.helpers import gateway_process, metric_value, stored_ids_in_write_order, wait_until

UTC = timezone.utc
T0 = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


def _record(
    i: int,
    *,
    model: str = "m",
    version: str = "1",
    route: str = "stable",
    at: datetime | None = None,
    outcome: str = "ok",
    pid: str | None = None,
) -> PredictionRecord:
    x = np.full((1, 4), float(i), dtype=np.float32)
    outputs = {"y": np.array([[i, -i]], dtype=np.int64)} if outcome == "ok" else {}
    return PredictionRecord(
        pid or f"p{i}",
        at or T0 + timedelta(seconds=i),
        model,
        version,
        route,
        {"x": x},
        outputs,
        0.001 * i,
        outcome,
    )


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = Store.for_state_dir(tmp_path / "state")
    s.upgrade()
    yield s
    s.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    s = backend.open()
    s.upgrade()
    return s


class RecordingSink:
    """The real store, with the batch sizes it was handed."""

    def __init__(self, store: Store, delay_s: float = 0.0) -> None:
        self.store = store
        self.batches: list[int] = []
        self.delay_s = delay_s

    def write_log_items(self, items: Sequence[PredictionRow | BatchFrame]) -> None:
        self.batches.append(len(expand_items(items)))
        if self.delay_s:
            time.sleep(self.delay_s)
        self.store.write_log_items(items)

    def ping(self) -> None:
        self.store.ping()

    def prune_predictions(self, *, older_than: datetime | None, keep_rows: int | None) -> int:
        return self.store.prune_predictions(older_than=older_than, keep_rows=keep_rows)

    def write_labels(self, model: str, labels: Sequence[Label]) -> Any:
        return self.store.write_labels(model, labels)

    def labeled_predictions(
        self, model: str, version: str, *, since: datetime | None = None, limit: int = 10_000
    ) -> Any:
        return self.store.labeled_predictions(model, version, since=since, limit=limit)


def _ids(store: Store, model: str = "m") -> list[str]:
    return [row["id"] for row in store.predictions(model)]


async def _until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll (the writer runs on this loop, so the test must yield to it) until `predicate` holds."""
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)


# --- the queue -----------------------------------------------------------------------------------


async def test_offer_never_blocks_and_drops_and_counts_when_full(sqlite_store: Store) -> None:
    plog = PredictionLog(sqlite_store, capacity=10)  # no writer started: the queue only fills
    started = time.perf_counter()
    accepted = [plog.offer(_record(i)) for i in range(10_000)]
    elapsed = time.perf_counter() - started
    assert accepted[:10] == [True] * 10 and not any(accepted[10:])
    assert plog.depth == 10
    assert plog.counters.dropped == 9_990
    assert elapsed < 1.0  # O(1) each: a full queue costs a comparison, not a wait
    await plog.flush()
    assert plog.counters.written == 10 and plog.depth == 0
    assert _ids(sqlite_store) == [f"p{i}" for i in range(10)]


async def test_queue_is_bounded_by_tensor_bytes_too(sqlite_store: Store) -> None:
    first = _record(1)
    size = len(tensors_to_bytes(first.inputs)) + len(tensors_to_bytes(first.outputs))  # what the queue holds
    plog = PredictionLog(sqlite_store, capacity=1000, max_bytes=3 * size + size // 2)
    assert plog.offer(first)
    assert plog.offer(_record(2))
    assert plog.offer(_record(3))
    assert not plog.offer(_record(4))  # a fourth would pass max_bytes
    assert plog.counters.dropped == 1
    await plog.flush()
    assert plog.offer(_record(4))  # room again once written


async def test_an_id_too_long_to_store_is_counted_as_failed(sqlite_store: Store) -> None:
    plog = PredictionLog(sqlite_store)
    assert not plog.offer(_record(1, pid="x" * (MAX_ID_LENGTH + 1)))
    assert plog.counters.failed == 1 and plog.depth == 0
    assert plog.offer(_record(2, pid="y" * MAX_ID_LENGTH))
    await plog.flush()
    assert _ids(sqlite_store) == ["y" * MAX_ID_LENGTH]


async def test_flush_writes_in_batches(sqlite_store: Store) -> None:
    sink = RecordingSink(sqlite_store)
    plog = PredictionLog(sink, batch_size=4)
    for i in range(10):
        plog.offer(_record(i))
    await plog.flush()
    assert sink.batches == [4, 4, 2]
    assert plog.counters.written == 10
    assert len(_ids(sqlite_store)) == 10


async def test_writer_writes_a_partial_batch_after_the_flush_interval(sqlite_store: Store) -> None:
    sink = RecordingSink(sqlite_store)
    plog = PredictionLog(sink, batch_size=100, flush_interval_s=0.05)
    plog.start()
    for i in range(3):
        plog.offer(_record(i))
    await _until(lambda: plog.counters.written >= 3)
    assert plog.counters.written == 3 and sink.batches == [3]
    await plog.close()


async def test_writer_wakes_as_soon_as_a_batch_is_full(sqlite_store: Store) -> None:
    sink = RecordingSink(sqlite_store)
    plog = PredictionLog(sink, batch_size=5, flush_interval_s=60)
    plog.start()
    await asyncio.sleep(0.05)
    for i in range(5):
        plog.offer(_record(i))
    await _until(lambda: plog.counters.written >= 5)
    assert plog.counters.written == 5  # long before the 60 s interval
    await plog.close()


async def test_records_that_arrive_during_a_write_wait_for_a_full_batch(sqlite_store: Store) -> None:
    """Under load the writer keeps to full batches: what arrived while the last batch was being
    written is not sent at once as a small batch (each batch has fixed costs)."""
    sink = RecordingSink(sqlite_store, delay_s=0.2)
    plog = PredictionLog(sink, batch_size=5, flush_interval_s=60)
    plog.start()
    for i in range(5):
        plog.offer(_record(i))  # a full batch: taken at once, 0.2 s in the sink
    await _until(lambda: sink.batches == [5])
    plog.offer(_record(5))
    plog.offer(_record(6))
    await _until(lambda: plog.counters.written == 5)
    await asyncio.sleep(0.1)
    assert sink.batches == [5] and plog.depth == 2  # waiting for three more, or for the interval
    for i in range(7, 10):
        plog.offer(_record(i))
    await _until(lambda: plog.counters.written == 10)
    assert sink.batches == [5, 5]
    await plog.close()
    assert _ids(sqlite_store) == sorted(f"p{i}" for i in range(10))


async def test_flush_waits_for_the_batch_already_with_the_sink(sqlite_store: Store) -> None:
    sink = RecordingSink(sqlite_store, delay_s=0.2)
    plog = PredictionLog(sink, batch_size=2, flush_interval_s=60)
    plog.start()
    plog.offer(_record(0))
    plog.offer(_record(1))  # a full batch: the writer takes it (and sleeps in the sink)
    await asyncio.sleep(0.05)
    assert plog.depth == 2 and plog.counters.written == 0  # the batch with the sink is still held in memory
    plog.offer(_record(2))
    await plog.flush()
    assert plog.counters.written == 3
    assert len(_ids(sqlite_store)) == 3
    await plog.close()


async def test_close_drains_everything_queued_then_refuses(sqlite_store: Store) -> None:
    plog = PredictionLog(sqlite_store, batch_size=128, flush_interval_s=60)
    plog.start()
    for i in range(1000):
        assert plog.offer(_record(i))
    await plog.close(timeout_s=30)
    assert plog.counters.written == 1000 and plog.depth == 0
    assert len(_ids(sqlite_store)) == 1000
    assert not plog.offer(_record(1001))
    assert plog.counters.dropped == 1


async def test_close_gives_up_after_its_timeout_and_counts_the_rest(sqlite_store: Store) -> None:
    sink = RecordingSink(sqlite_store, delay_s=0.5)
    plog = PredictionLog(sink, batch_size=10, flush_interval_s=60)
    plog.start()
    for i in range(100):
        plog.offer(_record(i))
    started = time.monotonic()
    await plog.close(timeout_s=0.2)
    assert time.monotonic() - started < 2
    c = plog.counters
    assert c.written + c.failed + c.dropped == 100
    assert c.dropped >= 80


async def test_a_failed_write_is_counted_and_the_log_keeps_going(tmp_path: Path) -> None:
    s = Store.for_state_dir(tmp_path / "state")  # not upgraded: there is no predictions table yet
    try:
        plog = PredictionLog(s, batch_size=4)
        for i in range(6):
            plog.offer(_record(i))
        await plog.flush()  # never raises
        assert plog.counters.failed == 6 and plog.counters.written == 0 and plog.depth == 0
        s.upgrade()
        for i in range(6, 9):
            plog.offer(_record(i))
        await plog.flush()
        assert plog.counters.written == 3
        assert _ids(s) == ["p6", "p7", "p8"]
    finally:
        s.close()


async def test_a_database_that_went_away_holds_its_records_and_counts_them_dropped_not_raised(tmp_path: Path) -> None:
    state = tmp_path / "state"
    s = Store.for_state_dir(state)
    s.upgrade()
    plog = PredictionLog(s, batch_size=10, flush_interval_s=0.05)
    plog.start()
    plog.offer(_record(0))
    await plog.flush()
    s.close()
    shutil.rmtree(state)
    state.write_text("not a directory any more")  # the database cannot be reopened
    try:
        for i in range(1, 6):
            assert plog.offer(_record(i))
        await _until(lambda: plog.sink_unavailable)
        assert plog.depth == 5  # held, to be tried again, not lost
        await plog.close(0.5)
        assert plog.counters.written == 1 and plog.counters.dropped == 5 and plog.counters.failed == 0
    finally:
        s.close()


async def test_the_batch_being_written_counts_against_the_capacity(tmp_path: Path) -> None:
    """The capacity bounds every record the log holds, the batch with the sink included: records that arrive
    while a batch waits for a locked database fill the rest of the capacity only, and when that batch comes
    back unwritten the log still holds no more than its capacity (it used to hold capacity + a batch)."""
    state = tmp_path / "state"
    state.mkdir()
    s = Store(f"sqlite:///{state / 'sluice.db'}", connect_args={"timeout": 0.5})
    s.upgrade()
    sink = RecordingSink(s)
    blocker = sqlite3.connect(state / "sluice.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the sink's insert waits for the lock, then finds the database busy
    plog = PredictionLog(sink, capacity=100, batch_size=50, flush_interval_s=60)
    plog.start()
    try:
        for i in range(50):
            assert plog.offer(_record(i))
        await _until(lambda: len(sink.batches) == 1)  # the batch is with the sink, waiting for the lock
        accepted = [i for i in range(50, 150) if plog.offer(_record(i))]
        assert accepted == list(range(50, 100))
        assert plog.counters.dropped == 50
        await _until(lambda: plog.sink_unavailable)
        assert plog.depth == 100
        assert not plog.offer(_record(150))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await plog.flush()
    assert plog.counters.as_dict() == {"written": 100, "dropped": 51, "failed": 0, "sampled_out": 0}
    assert sorted(_ids(s)) == sorted(f"p{i}" for i in range(100))
    await plog.close()
    s.close()


def _stored_in_order(store: Store) -> list[str]:
    return stored_ids_in_write_order(store)


async def test_what_memory_cannot_hold_is_spooled_and_written_back_in_order(
    locked_store: tuple[Store, sqlite3.Connection], tmp_path: Path
) -> None:
    store, blocker = locked_store
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    plog = PredictionLog(store, capacity=100, batch_size=20, flush_interval_s=0.05, spool=spool, probe_interval_s=0.05)
    plog.start()
    blocker.execute("BEGIN IMMEDIATE")
    accepted = [plog.offer(_record(i)) for i in range(500)]
    await _until(lambda: plog.sink_unavailable)
    assert all(accepted) and plog.counters.dropped == 0  # memory, then the spool
    assert plog.depth <= 100 and spool.counters.spooled_records >= 400 and spool.pending
    blocker.execute("ROLLBACK")
    await _until(lambda: plog.counters.written == 500, 30)
    assert _stored_in_order(store) == [f"p{i}" for i in range(500)]  # the held batch, the spool, then memory
    assert not spool.pending and spool.bytes == 0
    assert spool.counters.replayed_records == spool.counters.spooled_records
    await plog.close()
    spool.close()


async def test_a_capacity_of_one_batch_spills_the_held_batch(
    locked_store: tuple[Store, sqlite3.Connection], tmp_path: Path
) -> None:
    store, blocker = locked_store
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    plog = PredictionLog(store, capacity=20, batch_size=20, flush_interval_s=0.05, spool=spool, probe_interval_s=0.05)
    plog.start()
    blocker.execute("BEGIN IMMEDIATE")
    for i in range(20):
        assert plog.offer(_record(i))
    await _until(lambda: plog.sink_unavailable)
    assert plog.depth == 20  # the batch came back held: memory is full, and nothing is queued
    assert all(plog.offer(_record(i)) for i in range(20, 100))
    assert plog.counters.dropped == 0 and spool.counters.spooled_records == 80
    blocker.execute("ROLLBACK")
    await _until(lambda: plog.counters.written == 100, 30)
    assert _stored_in_order(store) == [f"p{i}" for i in range(100)]
    await plog.close()
    spool.close()


async def test_beyond_memory_and_the_spool_records_are_dropped_and_counted(
    locked_store: tuple[Store, sqlite3.Connection], tmp_path: Path
) -> None:
    store, blocker = locked_store
    one_frame = len(MAGIC) + len(spool_frame(prediction_rows([_record(i) for i in range(100, 120)])))
    spool = Spool(tmp_path / "spool", max_bytes=one_frame)
    plog = PredictionLog(store, capacity=100, batch_size=20, flush_interval_s=0.05, spool=spool, probe_interval_s=0.05)
    plog.start()
    blocker.execute("BEGIN IMMEDIATE")
    accepted = [plog.offer(_record(i)) for i in range(300)]
    await _until(lambda: plog.sink_unavailable)
    assert sum(accepted) == 120 and spool.counters.spooled_records == 20  # memory, and one frame of the spool
    assert plog.counters.dropped == plog.counters.dropped_beyond_spool == 180
    assert plog.counters.dropped_beyond_spool_bytes > 0
    blocker.execute("ROLLBACK")
    await _until(lambda: plog.counters.written == 120, 30)
    kept = [i for i, ok in enumerate(accepted) if ok]
    assert sorted(_ids(store)) == sorted(f"p{i}" for i in kept)
    await plog.close()
    spool.close()


async def test_a_shutdown_during_an_outage_spools_what_it_holds_for_the_next_start(
    locked_store: tuple[Store, sqlite3.Connection], tmp_path: Path
) -> None:
    store, blocker = locked_store
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    plog = PredictionLog(store, capacity=1000, batch_size=20, flush_interval_s=0.05, spool=spool, probe_interval_s=0.05)
    plog.start()
    blocker.execute("BEGIN IMMEDIATE")
    for i in range(150):
        assert plog.offer(_record(i))
    await _until(lambda: plog.sink_unavailable)
    assert spool.counters.spooled_records == 0  # memory holds them all, until the shutdown
    await plog.close(timeout_s=60)  # at once: the sink is away, memory goes to the spool
    assert plog.counters.as_dict() == {"written": 0, "dropped": 0, "failed": 0, "sampled_out": 0}
    assert spool.counters.spooled_records == 150
    spool.close()
    blocker.execute("ROLLBACK")

    again = Spool(tmp_path / "spool", max_bytes=1 << 20)  # the next start
    assert again.pending
    plog = PredictionLog(store, batch_size=20, flush_interval_s=0.05, spool=again)
    plog.start()
    await _until(lambda: plog.counters.written == 150, 30)
    assert sorted(_ids(store)) == sorted(f"p{i}" for i in range(150))
    assert not again.pending
    await plog.close()
    again.close()


async def test_pruning_runs_on_its_own(sqlite_store: Store) -> None:
    plog = PredictionLog(sqlite_store, retention=Retention(max_age_s=None, max_rows=5, every_s=0.05))
    for i in range(20):
        plog.offer(_record(i))
    await plog.flush()
    plog.start()
    await _until(lambda: len(_ids(sqlite_store)) <= 5)
    assert _ids(sqlite_store) == [f"p{i}" for i in range(15, 20)]
    await plog.close()


def test_metrics_export_the_counters_at_scrape_time(sqlite_store: Store) -> None:
    metrics = GatewayMetrics()
    plog = PredictionLog(sqlite_store, capacity=2)
    metrics.watch_prediction_log(plog.counters.as_dict, lambda: plog.depth)
    for i in range(3):
        plog.offer(_record(i))
    plog.record("id-x", "m", "1", "stable", {}, {}, 0.0, "ok", sample_rate=0.0)
    text = generate_latest(metrics.registry).decode()
    assert metric_value(text, "sluice_prediction_log_records_total", outcome="dropped") == 1
    assert metric_value(text, "sluice_prediction_log_records_total", outcome="sampled_out") == 1
    assert metric_value(text, "sluice_prediction_log_records_total", outcome="written") == 0
    assert metric_value(text, "sluice_prediction_log_queue_depth") == 2


# --- sampling and the stored tensor form -------------------------------------------------------------


def test_sampling_is_deterministic_by_id_and_near_the_rate() -> None:
    ids = [uuid.uuid4().hex for _ in range(20_000)]
    first = [sampled(i, 0.5) for i in ids]
    assert first == [sampled(i, 0.5) for i in ids]
    assert 9_500 < sum(first) < 10_500
    assert 1_700 < sum(sampled(i, 0.1) for i in ids) < 2_300
    assert all(sampled(i, 1.0) for i in ids[:100]) and not any(sampled(i, 0.0) for i in ids[:100])
    # A lower rate keeps a subset of what a higher one keeps.
    assert all(sampled(i, 0.5) for i in ids if sampled(i, 0.2))


def test_generated_ids_are_unique_time_ordered_hex() -> None:
    ids = [new_prediction_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    prefixes = [i[:12] for i in ids]
    assert prefixes == sorted(prefixes)  # milliseconds first: they arrive in the store's index order
    assert abs(int(ids[-1][:12], 16) - time.time() * 1000) < 60_000


def test_record_samples_and_counts() -> None:
    plog = PredictionLog(_NullSink())
    ids = [f"id-{i}" for i in range(2000)]
    kept = [plog.record(i, "m", "1", "stable", {}, {}, 0.0, "ok", sample_rate=0.25) for i in ids]
    assert kept == [sampled(i, 0.25) for i in ids]
    assert plog.counters.sampled_out == kept.count(False) and plog.depth == kept.count(True)


def test_record_checks_as_offer_does() -> None:
    """`record` inlines `offer`: the same limits, the same counters."""
    x = np.zeros((1, 4), dtype=np.float32)
    size = len(tensors_to_bytes({"x": x})) + len(tensors_to_bytes({"y": x}))  # what a queued record holds
    plog = PredictionLog(_NullSink(), capacity=3, max_bytes=3 * size)
    assert plog.record("x" * (MAX_ID_LENGTH + 1), "m", "1", "stable", {"x": x}, {}, 0.0, "ok") is False
    assert plog.counters.failed == 1
    big = np.zeros(3 * size, np.float32)
    assert plog.record("big", "m", "1", "stable", {"x": big}, {}, 0.0, "ok") is False
    assert plog.counters.dropped == 1  # over max_bytes
    assert plog.record("p", "m", "1", "stable", None, {}, 0.0, "ok") is False  # type: ignore[arg-type]
    assert plog.counters.failed == 2  # never raises
    assert [plog.record(f"p{i}", "m", "1", "stable", {"x": x}, {"y": x}, 0.0, "ok") for i in range(4)] == [
        True,
        True,
        True,
        False,  # capacity
    ]
    assert plog.counters.dropped == 2 and plog.depth == 3 and plog._queued_bytes == 3 * size
    model, id_, version, route, at, latency_s, outcome, inputs, outputs = plog._queue[0]
    assert (model, id_, version, route, latency_s, outcome) == ("m", "p0", "1", "stable", 0.0, "ok")
    assert abs(at - time.time()) < 60
    assert tensors_from_bytes(inputs)["x"].tolist() == x.tolist() and len(inputs) + len(outputs) == size


async def test_record_and_offer_store_the_same_fields(sqlite_store: Store) -> None:
    plog = PredictionLog(sqlite_store)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    before = datetime.now(UTC)
    assert plog.record("p1", "m", "1", "canary", {"x": x}, {"y": x * 2}, 0.25, "ok")
    assert plog.offer(PredictionRecord("p2", T0, "m", "1", "canary", {"x": x}, {"y": x * 2}, 0.25, "ok"))
    await plog.flush()
    rows = {r.id: r for r in sqlite_store.prediction_records("m", "1")}
    assert rows["p2"].at == T0.replace(tzinfo=None) or rows["p2"].at == T0  # the record's own time
    assert before.replace(tzinfo=None) - timedelta(seconds=1) <= rows["p1"].at.replace(tzinfo=None)
    for r in rows.values():
        assert (r.route, r.latency_s, r.outcome) == ("canary", 0.25, "ok")
        np.testing.assert_array_equal(r.inputs["x"], x)
        np.testing.assert_array_equal(r.outputs["y"], x * 2)


class _NullSink:
    def write_log_items(self, items: Sequence[PredictionRow | BatchFrame]) -> None:
        pass

    def ping(self) -> None:
        pass

    def prune_predictions(self, *, older_than: datetime | None, keep_rows: int | None) -> int:
        return 0

    def write_labels(self, model: str, labels: Sequence[Label]) -> Any:
        raise NotImplementedError

    def labeled_predictions(
        self, model: str, version: str, *, since: datetime | None = None, limit: int = 10_000
    ) -> Any:
        return []


def test_tensors_round_trip_through_their_json_form() -> None:
    tensors = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 3,
        "f16": np.array([[0.5, -1.25]], dtype=np.float16),
        "f64": np.array([1.5, np.nan, np.inf]),
        "i64": np.array([[1, -2], [3, 4]], dtype=np.int64),
        "u8": np.array([255, 0], dtype=np.uint8),
        "b": np.array([[True, False]]),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
        "bytes": np.array([b"abc", "d\u00e9".encode()], dtype=object),
    }
    doc = orjson.loads(tensors_to_json(tensors))
    assert doc["f32"] == {
        "shape": [2, 3],
        "datatype": "FP32",
        "data": pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3]),
    }
    assert doc["f64"]["data"] == [1.5, None, None]  # JSON has no NaN or infinity
    assert doc["strided"] == {"shape": [3, 2], "datatype": "FP32", "data": [0, 2, 4, 6, 8, 10]}
    assert doc["bytes"] == {"shape": [2], "datatype": "BYTES", "data": ["abc", "d\u00e9"]}
    back = tensors_from_json(doc)
    for name in ("f32", "f16", "i64", "u8", "b", "strided"):
        assert back[name].dtype == tensors[name].dtype, name
        np.testing.assert_array_equal(back[name], tensors[name])
    assert np.isnan(back["f64"][1]) and back["f64"][0] == 1.5


def test_tensors_round_trip_through_their_binary_form() -> None:
    tensors = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 3,
        "f16": np.array([[0.5, -1.25]], dtype=np.float16),
        "f64": np.array([1.5, np.nan, np.inf, -np.inf, -0.0]),
        "i64": np.array([[1, -2], [3, 2**62]], dtype=np.int64),
        "u64": np.array([2**64 - 1], dtype=np.uint64),
        "u8": np.array([255, 0], dtype=np.uint8),
        "b": np.array([[True, False]]),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
        "transposed": np.arange(6, dtype=np.int32).reshape(2, 3).T,
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.int8),
        "named \u00e9": np.array([7], dtype=np.int16),
    }
    blob = tensors_to_bytes(tensors)
    assert blob[:1] == TENSORS_V1
    back = tensors_from_bytes(blob)
    assert list(back) == list(tensors)
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape, name
        assert back[name].tobytes() == np.ascontiguousarray(array).tobytes(), name  # every bit, NaN included
        assert back[name].flags.writeable, name
    # One tensor (the common case, with its own cached prefix) and none.
    one = {"input": np.arange(32, dtype=np.float32).reshape(1, 32)}
    assert len(tensors_to_bytes(one)) == 1 + 2 + 5 + 2 + 16 + 128
    np.testing.assert_array_equal(tensors_from_bytes(tensors_to_bytes(one))["input"], one["input"])
    assert tensors_from_bytes(tensors_to_bytes({})) == {} and tensors_from_bytes(None) == {}
    # The JSON form read from the binary one is what the store kept before (NaN and infinities as null).
    assert stored_tensors_to_json(blob) == orjson.loads(tensors_to_json(tensors))
    assert stored_tensors_to_json(blob)["f64"]["data"] == [1.5, None, None, None, -0.0]


def test_tensors_without_a_fixed_width_fall_back_to_json_text() -> None:
    tensors = {
        "x": np.array([1.0, np.nan], dtype=np.float32),
        "bytes": np.array([b"abc", "d\u00e9".encode()], dtype=object),
    }
    blob = tensors_to_bytes(tensors)
    assert blob.startswith(b"{") and orjson.loads(blob) == orjson.loads(tensors_to_json(tensors))
    back = tensors_from_bytes(blob)
    assert back["bytes"].tolist() == ["abc", "d\u00e9"] and np.isnan(back["x"][1])
    # Not native byte order: JSON too, with its datatype (not BYTES).
    big = tensors_from_bytes(tensors_to_bytes({"be": np.arange(3, dtype=">f4")}))["be"]
    assert big.dtype == np.float32 and big.tolist() == [0.0, 1.0, 2.0]
    # JSON text as stored before the binary form (bytes after migration 3, or text) reads the same.
    legacy = tensors_to_json({"y": np.array([[1, -1]], dtype=np.int64)})
    for stored in (legacy, legacy.encode(), memoryview(legacy.encode())):
        assert tensors_from_bytes(stored)["y"].tolist() == [[1, -1]]
        assert stored_tensors_to_json(stored) == {"y": {"shape": [1, 2], "datatype": "INT64", "data": [1, -1]}}


# --- the store as the sink, on SQLite and PostgreSQL ----------------------------------------------------


def test_write_predictions_stores_every_field_and_ignores_duplicates(store: Store) -> None:
    store.write_predictions([_record(1), _record(2, outcome="timeout")])
    store.write_predictions([_record(1, route="canary"), _record(3)])  # p1 again: ignored
    rows = store.predictions("m")
    assert [r["id"] for r in rows] == ["p1", "p2", "p3"]
    first = rows[0]
    assert first["route"] == "stable" and first["version"] == "1" and first["outcome"] == "ok"
    assert first["at"] == T0 + timedelta(seconds=1)
    assert first["latency_s"] == pytest.approx(0.001)
    assert first["inputs"] == {"x": {"shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}}
    assert first["outputs"] == {"y": {"shape": [1, 2], "datatype": "INT64", "data": [1, -1]}}
    assert rows[1]["outcome"] == "timeout" and rows[1]["outputs"] == {}
    store.write_predictions([])


def test_a_batch_of_many_versions_routes_and_outcomes_is_stored_row_for_row(store: Store) -> None:
    """A batch larger than one INSERT statement's rows, mixing versions, routes and outcomes, comes back row for
    row; an id reused within the batch keeps its first prediction, as it does across batches."""
    batch = []
    for i in range(1, 1301):
        version = ("1", "2", "3")[i % 3]
        if version == "3":  # one version's rows differ in route and outcome now and then
            route, outcome = ("direct", "error") if i % 7 == 0 else ("stable", "ok")
        else:
            route, outcome = ("shadow" if version == "2" else "stable"), "ok"
        batch.append(_record(i, version=version, route=route, outcome=outcome))
        if i == 1000:  # a caller's id again, in the same version, answered otherwise: the first one stays
            batch.append(_record(1000, version="3", route="direct", outcome="timeout", pid="p998"))
    batch.append(_record(5, model="other", version="1"))
    store.write_predictions(batch)
    stored = {(r["version"], r["id"]): r for r in store.predictions("m")}
    assert len(stored) == 1300
    for record in batch[:-1]:
        if (record.version, record.id) == ("3", "p998") and record.outcome == "timeout":
            continue
        row = stored[record.version, record.id]
        assert (row["route"], row["outcome"], row["at"]) == (record.route, record.outcome, record.at), record.id
        assert row["latency_s"] == pytest.approx(record.latency_s)
        assert row["inputs"]["x"]["data"] == record.inputs["x"].ravel().tolist()
    assert stored["3", "p998"]["outcome"] == "ok" and stored["3", "p998"]["inputs"]["x"]["data"] == [998.0] * 4
    assert [(r["id"], r["version"]) for r in store.predictions("other")] == [("p5", "1")]


def test_a_shadow_answer_shares_its_requests_id(store: Store) -> None:
    store.write_predictions([_record(1, version="2"), _record(1, version="1", route="shadow")])
    store.write_predictions([_record(1, model="other")])  # the same caller id under another model
    assert sorted((r["version"], r["route"]) for r in store.predictions("m")) == [("1", "shadow"), ("2", "stable")]
    assert store.write_labels("m", [Label("p1", 1)]).stored == 1
    assert [p.id for p in store.labeled_predictions("m", "2")] == ["p1"]
    assert [p.id for p in store.labeled_predictions("m", "1")] == ["p1"]  # the shadow's accuracy, same label
    assert store.labeled_predictions("other", "1") == []


def test_prune_by_age(store: Store) -> None:
    store.write_predictions([_record(i) for i in range(10)])
    store.write_labels("m", [Label("p2", 0), Label("p8", 1)])
    assert store.prune_predictions(older_than=T0 + timedelta(seconds=5), keep_rows=None) == 5
    assert _ids(store) == ["p5", "p6", "p7", "p8", "p9"]
    assert store.labels("m") == {"p8": 1}  # the label of a pruned prediction goes with it
    assert store.prune_predictions(older_than=T0 + timedelta(seconds=5), keep_rows=None) == 0


def test_prune_by_row_count_keeps_the_newest_across_models(store: Store) -> None:
    store.write_predictions([_record(i, model="a" if i % 2 else "b") for i in range(10)])
    assert store.prune_predictions(older_than=None, keep_rows=4) == 6
    assert _ids(store, "a") == ["p7", "p9"] and _ids(store, "b") == ["p6", "p8"]
    assert store.prune_predictions(older_than=None, keep_rows=4) == 0
    assert store.prune_predictions(older_than=None, keep_rows=0) == 4
    assert _ids(store, "a") == []


def test_prune_by_row_count_with_more_versions_than_it_merges(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predictions_mod, "_MERGE_VERSIONS", 1)  # one ordered scan of the table instead
    store.write_predictions([_record(i, version=str(i % 3)) for i in range(10)])
    assert store._prediction_versions() == [("m", "0"), ("m", "1"), ("m", "2")]
    assert store.prune_predictions(older_than=None, keep_rows=4) == 6
    assert _ids(store) == ["p6", "p7", "p8", "p9"]
    assert store.prune_predictions(older_than=T0 + timedelta(seconds=8), keep_rows=None) == 2
    assert _ids(store) == ["p8", "p9"]


def test_prune_by_row_count_counts_ties_and_single_versions(store: Store) -> None:
    store.write_predictions([_record(i, at=T0 + timedelta(seconds=i // 2)) for i in range(6)])  # pairs share a time
    assert store.prune_predictions(older_than=None, keep_rows=3) == 4  # the pair at the cutoff goes whole
    assert _ids(store) == ["p4", "p5"]
    assert store.prune_predictions(older_than=None, keep_rows=5) == 0
    store.prune_predictions(older_than=None, keep_rows=0)
    assert _ids(store) == [] and store._prediction_versions() == []
    assert store.prune_predictions(older_than=T0, keep_rows=0) == 0


def test_tensors_round_trip_through_the_store(store: Store) -> None:
    """NaN, infinities, strided views and BYTES tensors, on both engines: numpy arrays back from
    `prediction_records`, the JSON form (null for NaN) from `predictions` and `labeled_predictions`."""
    x = np.array([[np.nan, np.inf, -np.inf, 1.5]], dtype=np.float32)
    strided = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]
    text = np.array([b"abc", "d\u00e9".encode()], dtype=object)
    records = [
        PredictionRecord("a", T0, "m", "1", "stable", {"x": x, "s": strided}, {"y": x[:, :2]}, 0.1, "ok"),
        PredictionRecord("b", T0 + timedelta(seconds=1), "m", "1", "stable", {"t": text}, {"n": x[0, 3:]}, 0.1, "ok"),
    ]
    store.write_predictions(records)
    a, b = store.prediction_records("m", "1")
    assert a.inputs["x"].tobytes() == x.tobytes() and a.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(a.inputs["s"], strided)
    assert a.outputs["y"].shape == (1, 2) and np.isnan(a.outputs["y"][0, 0])
    assert b.inputs["t"].tolist() == ["abc", "d\u00e9"] and b.outputs["n"].tolist() == [1.5]
    rows = store.predictions("m")
    assert rows[0]["inputs"]["x"] == {"shape": [1, 4], "datatype": "FP32", "data": [None, None, None, 1.5]}
    assert rows[0]["inputs"]["s"]["data"] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert rows[1]["inputs"] == {"t": {"shape": [2], "datatype": "BYTES", "data": ["abc", "d\u00e9"]}}
    store.write_labels("m", [Label("a", 1)])
    (labeled,) = store.labeled_predictions("m", "1")
    assert labeled.outputs == {"y": {"shape": [1, 2], "datatype": "FP32", "data": [None, None]}}


def test_prune_deletes_in_chunks(store: Store) -> None:
    store.write_predictions([_record(i) for i in range(25)])
    assert store._delete_batches("m", "1", sa.true(), chunk=10) == 25  # 10 + 10 + 5, each its own transaction
    assert _ids(store) == []
    assert store.write_labels("m", [Label("p3", 1)]).unknown == ("p3",)  # its key went with it


def test_labels_all_or_nothing_idempotent_and_updatable(store: Store) -> None:
    store.write_predictions([_record(i) for i in range(5)])
    result = store.write_labels("m", [Label("p1", 1), Label("nope", 0), Label("p2", 0), Label("nada", 3)])
    assert result.unknown == ("nope", "nada") and result.stored == 0
    assert store.labels("m") == {}  # nothing of the batch was stored
    assert store.write_labels("m", [Label("p1", 1), Label("p2", [0, 1])]).stored == 2
    again = store.write_labels("m", [Label("p1", 1), Label("p2", [0, 1])])
    assert (again.stored, again.unchanged, again.unknown) == (0, 2, ())
    changed = store.write_labels("m", [Label("p1", 2), Label("p2", [0, 1]), Label("p3", "cat")])
    assert (changed.stored, changed.unchanged) == (2, 1)
    assert store.labels("m") == {"p1": 2, "p2": [0, 1], "p3": "cat"}
    # 1 and 1.0 or true are different JSON: a change, not a repeat.
    assert store.write_labels("m", [Label("p1", 2.0)]).stored == 1
    # The same id twice in one call: the last one wins.
    assert store.write_labels("m", [Label("p4", 0), Label("p4", 5)]).stored == 1
    assert store.labels("m", ["p4"]) == {"p4": 5}
    # Labels are per model: p1 is not a prediction of "other".
    assert store.write_labels("other", [Label("p1", 1)]).unknown == ("p1",)


def test_label_values_must_be_json(store: Store) -> None:
    from gateway.errors import InvalidInput

    store.write_predictions([_record(1)])
    with pytest.raises(InvalidInput, match="p1"):
        store.write_labels("m", [Label("p1", float("nan"))])


def test_labeled_predictions_join_labels_to_the_versions_answers(store: Store) -> None:
    records = [_record(i, version="1" if i < 6 else "2") for i in range(10)]
    records.append(_record(10, outcome="error"))
    store.write_predictions(records)
    late = T0 + timedelta(hours=5)
    labels = [Label(f"p{i}", i % 3, at=late) for i in (1, 3, 5, 7, 10)]
    assert store.write_labels("m", labels).stored == 5
    v1 = store.labeled_predictions("m", "1")
    assert [(p.id, p.label) for p in v1] == [("p1", 1), ("p3", 0), ("p5", 2)]  # p10 failed: no answer to judge
    assert v1[0].version == "1" and v1[0].at == T0 + timedelta(seconds=1) and v1[0].labeled_at == late
    assert tensors_from_json(v1[0].outputs)["y"].tolist() == [[1, -1]]
    assert [p.id for p in store.labeled_predictions("m", "1", since=T0 + timedelta(seconds=2))] == ["p3", "p5"]
    assert [p.id for p in store.labeled_predictions("m", "1", limit=1)] == ["p1"]
    assert [p.id for p in store.labeled_predictions("m", "2")] == ["p7"]


def test_a_label_without_a_time_takes_the_time_it_arrived(store: Store) -> None:
    store.write_predictions([_record(1)])
    before = datetime.now(UTC)
    store.write_labels("m", [Label("p1", 1)])
    (p,) = store.labeled_predictions("m", "1")
    assert before - timedelta(seconds=1) <= p.labeled_at <= datetime.now(UTC) + timedelta(seconds=1)


async def test_log_against_the_store_on_both_engines(store: Store) -> None:
    plog = PredictionLog(store, batch_size=50, flush_interval_s=0.05)
    plog.start()
    for i in range(230):
        plog.offer(_record(i, at=datetime.now(UTC)))
    plog.offer(_record(3, at=datetime.now(UTC)))  # a duplicate id: ignored by the store, no failure
    await plog.close()
    assert plog.counters.written == 231 and plog.counters.failed == 0
    assert len(_ids(store)) == 230


# --- end to end: a real gateway, SIGTERM under load ---------------------------------------------------

ROW_WIDTH = 32


def _row(i: int) -> list[float]:
    return [float(np.float32((i * 37 + j * 11) % 1000 / 1000.0)) for j in range(ROW_WIDTH)]


def _http_client_loop(url: str, todo: Iterator[int], lock: threading.Lock, results: dict[str, tuple[int, str]]) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            pinned = i % 3 == 0
            path = "/v2/models/mlp/versions/1/infer" if pinned else "/v2/models/mlp/infer"
            body: dict[str, Any] = {
                "inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": _row(i)}]
            }
            if i % 2:
                body["id"] = f"http-{i}"
            try:
                r = client.post(path, json=body)
            except httpx.TransportError:
                return  # the gateway stopped accepting: this client is done
            if r.status_code == 200:
                doc = r.json()
                results[doc["id"]] = (i, "pinned" if pinned else "stable")
            elif r.status_code != 503:
                raise AssertionError(f"unexpected {r.status_code}: {r.text}")


def _grpc_client_loop(
    addr: str, todo: Iterator[int], lock: threading.Lock, results: dict[str, tuple[int, str]]
) -> None:
    client = grpcclient.InferenceServerClient(addr)
    try:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            pinned = i % 3 == 0
            x = grpcclient.InferInput("input", [1, 32], "FP32")
            x.set_data_from_numpy(np.array([_row(i)], dtype=np.float32))
            try:
                result = client.infer(
                    "mlp",
                    [x],
                    model_version="1" if pinned else "",
                    request_id=f"grpc-{i}" if i % 2 else "",
                    client_timeout=60,
                )
            except Exception:
                return  # UNAVAILABLE: draining, or the server is gone
            results[result.get_response().id] = (i, "pinned" if pinned else "stable")
    finally:
        client.close()


def test_sigterm_under_load_loses_no_prediction_record(tmp_path: Path) -> None:
    """32 clients (HTTP and gRPC) send 2,000 requests; SIGTERM arrives mid-way. Every request that got
    an answer has its record afterwards, with its model, version, route and input data."""
    repo = build_demo_repository(tmp_path / "models")
    total = 2000
    results: dict[str, tuple[int, str]] = {}
    lock = threading.Lock()
    todo = iter(range(total))
    with gateway_process(repo, "--drain-timeout", "30", tmp=tmp_path) as gw:
        assert gw.state_dir is not None
        with ThreadPoolExecutor(32) as pool:
            futures = [
                pool.submit(
                    _http_client_loop if n % 2 else _grpc_client_loop,
                    gw.http_url if n % 2 else gw.grpc_addr,
                    todo,
                    lock,
                    results,
                )
                for n in range(32)
            ]
            wait_until(lambda: len(results) >= total // 2, timeout=120, what="half the requests answered")
            gw.proc.send_signal(15)
            for f in futures:
                f.result(timeout=120)
        assert gw.proc.wait(60) == 0
    assert len(results) >= total // 2
    assert any(k.startswith("http-") for k in results) and any(k.startswith("grpc-") for k in results)
    s = Store.for_state_dir(gw.state_dir)
    try:
        rows = {r["id"]: r for r in s.predictions("mlp", limit=10 * total)}
    finally:
        s.close()
    missing = [pid for pid in results if pid not in rows]
    assert missing == [], f"{len(missing)} answered requests have no record, e.g. {missing[:5]}"
    for pid, (i, route) in results.items():
        row = rows[pid]
        assert row["route"] == route and row["outcome"] == "ok"
        assert row["version"] == ("1" if route == "pinned" else "2")
        assert row["inputs"]["input"]["shape"] == [1, 32]
        assert row["inputs"]["input"]["data"] == pytest.approx(_row(i))
        assert row["outputs"]["output"]["shape"] == [1, 8]


SAMPLED_CONFIG = "logging:\n  sample_rate: 0.5\n"
OFF_CONFIG = "logging:\n  enabled: false\n"


@pytest.fixture
def sampling_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    for name, config in (("full", ""), ("half", SAMPLED_CONFIG), ("off", OFF_CONFIG)):
        build_reference_mlp(repo / name / "1" / "model.onnx")
        build_reference_mlp(repo / name / "2" / "model.onnx", seed=4321)
        (repo / name / "config.yaml").write_text(config + "version_policy:\n  all: true\n")
    return repo


def test_sampling_shadows_and_canaries_in_the_log(sampling_repo: Path, tmp_path: Path) -> None:
    with gateway_process(sampling_repo, tmp=tmp_path) as gw, httpx.Client(base_url=gw.http_url, timeout=30) as http:
        assert gw.state_dir is not None
        admin = {"headers": gw.admin_headers}
        ok = http.put("/admin/models/full/traffic", json={"stable": "2", "shadows": ["1"]}, **admin)
        assert ok.status_code == 200, ok.text
        ok = http.put("/admin/models/half/traffic", json={"stable": "1", "canary": "2", "canary_weight": 50}, **admin)
        assert ok.status_code == 200, ok.text
        ids: dict[str, list[str]] = {"full": [], "half": [], "off": []}
        for i in range(400):
            for model in ids:
                body = {
                    "id": f"{model}-{i}",
                    "inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": _row(i)}],
                }
                r = http.post(f"/v2/models/{model}/infer", json=body)
                assert r.status_code == 200, r.text
                ids[model].append(r.json()["id"])

        def copies() -> float:
            text = gw.metrics()
            done = metric_value(text, "sluice_shadow_requests_total", model="full", version="1")
            return done + metric_value(text, "sluice_shadow_dropped_total", 0.0, model="full", version="1")

        wait_until(lambda: copies() == 400, timeout=20, what="every shadow copy answered or dropped")
        shadows = metric_value(gw.metrics(), "sluice_shadow_requests_total", model="full", version="1")
        assert gw.terminate() == 0
    s = Store.for_state_dir(gw.state_dir)
    try:
        full = s.predictions("full", limit=10_000)
        half = s.predictions("half", limit=10_000)
        off = s.predictions("off", limit=10_000)
    finally:
        s.close()
    # full: every answer, plus every shadow copy that ran, under the same id.
    stable = {r["id"] for r in full if r["route"] == "stable"}
    shadow = [r for r in full if r["route"] == "shadow"]
    assert stable == set(ids["full"]) and all(r["version"] == "2" for r in full if r["route"] == "stable")
    assert len(shadow) == shadows > 300 and all(r["version"] == "1" and r["id"] in stable for r in shadow)
    # half: exactly the ids the hash picks (about half), on the stable and the canary.
    expected = {pid for pid in ids["half"] if sampled(pid, 0.5)}
    assert {r["id"] for r in half} == expected and 140 < len(expected) < 260
    routes = {r["route"]: r["version"] for r in half}
    assert routes == {"stable": "1", "canary": "2"}
    assert off == []


def test_logging_metrics_on_a_live_gateway(sampling_repo: Path, tmp_path: Path) -> None:
    with gateway_process(sampling_repo, tmp=tmp_path) as gw, httpx.Client(base_url=gw.http_url, timeout=30) as http:
        for i in range(50):
            for model in ("full", "off"):
                body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": _row(i)}]}
                assert http.post(f"/v2/models/{model}/infer", json=body).status_code == 200
        bad = {"inputs": [{"name": "input", "shape": [1, 31], "datatype": "FP32", "data": [0.0] * 31}]}
        assert http.post("/v2/models/full/versions/1/infer", json=bad).status_code == 400

        def written() -> bool:
            return metric_value(gw.metrics(), "sluice_prediction_log_records_total", outcome="written") == 51

        wait_until(written, timeout=10, what="51 records written")
        text = gw.metrics()
        assert metric_value(text, "sluice_prediction_log_records_total", outcome="sampled_out") == 50
        assert metric_value(text, "sluice_prediction_log_records_total", outcome="dropped") == 0
        assert metric_value(text, "sluice_prediction_log_queue_depth") == 0
        assert gw.state_dir is not None
        s = Store.for_state_dir(gw.state_dir)
        try:
            (failed,) = [r for r in s.predictions("full") if r["outcome"] != "ok"]
        finally:
            s.close()
        assert failed["outcome"] == "invalid" and failed["route"] == "pinned" and failed["outputs"] == {}
        assert len(failed["id"]) == 32  # the caller sent no id: one was made for the record
