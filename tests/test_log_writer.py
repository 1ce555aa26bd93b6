"""The prediction log's writer process: batches cross a pipe to a child that owns its own store.

Real child processes (`python -m gateway.storage.log_writer`), real SQLite and PostgreSQL; faults are real
too: the child is SIGKILLed, or held on a SQLite write lock until the parent gives up on it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.storage.log_writer import (
    HANDOVER_ITEMS,
    WRITE_PIECE_ITEMS,
    WRITE_TRANSACTION_ITEMS,
    ProcessRowWriter,
    WriterProcessError,
    WriterUnavailable,
    batch_message,
    pickled_in_turns,
    write_in_pieces,
)
from gateway.storage.store import Store
from monitors.log_batches import BatchEntry, BatchTensors
from monitors.prediction_log import PredictionLog, batch_frame, expand_items, prediction_rows
from monitors.records import PredictionRecord
from tests.databases import Backend
from tests.faults import postgres_behind_proxy
from tests.helpers import gateway_process, wait_until
from tests.models import build_tabular
from tests.tcp_proxy import TcpProxy

UTC = timezone.utc
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _records(start: int, n: int, model: str = "m") -> list[PredictionRecord]:
    out = []
    for i in range(start, start + n):
        x = np.full((1, 3), i, dtype=np.float32)
        out.append(
            PredictionRecord(
                f"p{i}", T0 + timedelta(milliseconds=i), model, "1", "stable", {"x": x}, {"y": x[:, :1]}, 0.01, "ok"
            )
        )
    return out


@pytest.fixture
def store(backend: Backend) -> Store:
    s = backend.open()
    s.upgrade()
    return s


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not alive
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_batches_are_written_by_a_child_process(store: Store) -> None:
    writer = ProcessRowWriter(store, write_timeout_s=30)
    records = _records(0, 700)
    await writer.write(prediction_rows(records[:500]))
    await writer.write(prediction_rows(records[500:]))
    await writer.write(prediction_rows(records[:10]))  # repeats: ignored, as in-process
    assert writer.pid is not None and writer.pid != os.getpid()
    stored = store.prediction_records("m", "1", limit=1000)
    assert [r.id for r in stored] == [f"p{i}" for i in range(700)]
    assert stored[7].at.replace(tzinfo=UTC) == T0 + timedelta(milliseconds=7)  # microseconds kept
    np.testing.assert_array_equal(stored[7].inputs["x"], np.full((1, 3), 7, np.float32))
    np.testing.assert_array_equal(stored[7].outputs["y"], np.full((1, 1), 7, np.float32))
    await writer.close()
    assert writer.pid is None


def _lone_requests(n: int, first: int = 0) -> list[BatchEntry]:
    """`n` runtime batches of one request each, as the log queues them at one connection."""
    entries = []
    for i in range(first, first + n):
        x = np.full((1, 3), i, dtype=np.float32)
        at = (T0 + timedelta(milliseconds=i)).timestamp()
        entry = BatchEntry(None, "m", "1", BatchTensors({"x": x}, {"y": x[:, :1] * 2}, 1, True), x.nbytes * 2, at)
        entry.slots.append((f"b{i}", "stable", 0.01, 0, 1, None))
        entries.append(entry)
    return entries


async def test_a_batch_of_many_runtime_batches_is_packed_in_turns_of_the_event_loop() -> None:
    """500 one-request runtime batches (one connection's log batch) are not packed and pickled in one go: the
    loop serves requests between every `HANDOVER_ITEMS`, and the child reads the pieces back as one batch."""
    entries = _lone_requests(3 * HANDOVER_ITEMS + 5)
    rows = prediction_rows(_records(0, 2))
    items = [rows[0], *entries, rows[1]]
    packing = asyncio.create_task(pickled_in_turns(items))
    await asyncio.sleep(0)  # the task's first step: one piece, then a turn for the rest of the loop
    assert not packing.done()
    turns = 1
    while not packing.done():
        await asyncio.sleep(0)
        turns += 1
    assert turns >= 4  # ceil(len(items) / HANDOVER_ITEMS) pieces, a turn after each but the last
    turns_of_the_child: list[None] = []
    message = batch_message(b"".join(packing.result()), lambda: turns_of_the_child.append(None))
    assert message == [rows[0], *(batch_frame(e) for e in entries), rows[1]]
    assert len(turns_of_the_child) == 3  # four pickles, the child's CPU given away between them
    assert expand_items(message) == expand_items(items)

    few = asyncio.create_task(pickled_in_turns(entries[:HANDOVER_ITEMS]))
    await asyncio.sleep(0)
    assert few.done()  # a batch of at most HANDOVER_ITEMS: packed at once, as before
    assert batch_message(b"".join(few.result())) == [batch_frame(e) for e in entries[:HANDOVER_ITEMS]]


async def test_runtime_batches_in_pieces_are_written_by_the_child_row_for_row(store: Store) -> None:
    writer = ProcessRowWriter(store, write_timeout_s=30)
    entries = _lone_requests(2 * HANDOVER_ITEMS + 1)
    await writer.write([*prediction_rows(_records(0, 3)), *entries])
    stored = store.prediction_records("m", "1", limit=1000)
    assert sorted(r.id for r in stored) == sorted([f"p{i}" for i in range(3)] + [f"b{i}" for i in range(len(entries))])
    last = next(r for r in stored if r.id == f"b{len(entries) - 1}")
    np.testing.assert_array_equal(last.outputs["y"], np.full((1, 1), 2 * (len(entries) - 1), np.float32))
    await writer.close()


class _FailAt:
    """A `between` that records its calls and raises at the `fail_at`-th: a write that fails part-way."""

    def __init__(self, fail_at: int = 0) -> None:
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError("the write failed part-way")


def test_the_child_gives_its_cpu_away_every_piece_and_commits_every_transaction(store: Store) -> None:
    """One connection's log batch (500 one-request items) is not one burst of the child's CPU: it gives the CPU
    away after every `WRITE_PIECE_ITEMS` items and commits every `WRITE_TRANSACTION_ITEMS`; a failure part-way
    loses only the transaction it is in, and the batch sent again stores only what is not there yet."""
    assert WRITE_TRANSACTION_ITEMS % WRITE_PIECE_ITEMS == 0
    rows = prediction_rows(_records(0, 2 * WRITE_TRANSACTION_ITEMS + 3))
    items = [*rows, *map(batch_frame, _lone_requests(5))]
    pieces_per_transaction = WRITE_TRANSACTION_ITEMS // WRITE_PIECE_ITEMS
    failing = _FailAt(fail_at=pieces_per_transaction + 1)  # the second transaction's first piece is written
    with pytest.raises(OSError, match="part-way"):
        write_in_pieces(store, items, between=failing)
    assert store.count_predictions("m", "1") == WRITE_TRANSACTION_ITEMS  # the first transaction, committed
    calls = _FailAt()
    assert write_in_pieces(store, items, between=calls) == len(items) - WRITE_TRANSACTION_ITEMS
    assert calls.calls == 2 * pieces_per_transaction  # 17 pieces (8, 8 and 1), the CPU given away between them
    stored = store.prediction_records("m", "1", limit=1000)
    assert sorted(r.id for r in stored) == sorted([f"p{i}" for i in range(len(rows))] + [f"b{i}" for i in range(5)])
    assert write_in_pieces(store, items, between=calls) == 0
    assert store.count_predictions("m", "1") == len(items)
    few = _FailAt()
    assert write_in_pieces(store, prediction_rows(_records(1000, 10)), between=few) == 10
    assert few.calls == 0  # under load a log batch is a few runtime batches: one piece, nothing given away


def test_a_write_in_pieces_is_one_transaction(store: Store) -> None:
    """`Store.write_log_items` with `piece`: each piece its own statements, `between` called between them inside
    the transaction, so a failure there stores none of the pieces."""
    items = [*prediction_rows(_records(0, 7)), *map(batch_frame, _lone_requests(3))]
    with pytest.raises(OSError, match="part-way"):
        store.write_log_items(items, piece=3, between=_FailAt(fail_at=2))
    assert store.count_predictions("m", "1") == 0
    calls = _FailAt()
    assert store.write_log_items(items, piece=3, between=calls) == 10
    assert calls.calls == 3  # pieces of 3, 3, 3 and 1
    assert store.count_predictions("m", "1") == 10
    assert store.write_log_items(items, piece=3, between=calls) == 0  # each piece finds the rest stored


async def test_the_child_runs_the_serving_process_code_not_a_gateway_folder_where_it_runs(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m` put the working directory first on the child's path: started from another checkout (a
    benchmark of an older commit), the child ran that checkout's writer."""
    other = tmp_path / "gateway" / "storage"
    other.mkdir(parents=True)
    (tmp_path / "gateway" / "__init__.py").write_text("")
    (other / "__init__.py").write_text("")
    (other / "log_writer.py").write_text("raise SystemExit('the wrong writer')\n")
    monkeypatch.chdir(tmp_path)
    writer = ProcessRowWriter(store, write_timeout_s=30)
    await writer.write(prediction_rows(_records(0, 3)))
    assert [r.id for r in store.prediction_records("m", "1", limit=10)] == ["p0", "p1", "p2"]
    await writer.close()


async def _gone(writer: ProcessRowWriter, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if writer.pid is None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the killed writer process is still there")


async def test_a_killed_child_is_replaced_and_the_next_batch_written(store: Store) -> None:
    writer = ProcessRowWriter(store, write_timeout_s=30)
    await writer.write(prediction_rows(_records(0, 5)))
    first = writer.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await _gone(writer)
    await writer.write(prediction_rows(_records(5, 5)))
    assert writer.pid not in (None, first) and writer.restarts == 1
    assert store.count_predictions("m", "1") == 10
    await writer.close()


async def test_a_child_that_does_not_answer_is_killed_and_the_next_batch_goes_through(tmp_path: Path) -> None:
    store = Store.for_state_dir(tmp_path / "state")
    store.upgrade()
    writer = ProcessRowWriter(store, write_timeout_s=1.0)
    await writer.start()
    hung = writer.pid
    assert hung is not None
    blocker = sqlite3.connect(tmp_path / "state" / "sluice.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the child's insert now waits for the lock (30 s busy timeout)
    try:
        with pytest.raises(WriterProcessError, match="failed: TimeoutError"):
            await writer.write(prediction_rows(_records(0, 3)))
        assert not _alive(hung)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await writer.write(prediction_rows(_records(3, 3)))  # a new child; the held batch is gone
    assert writer.restarts == 1
    assert [r.id for r in store.prediction_records("m", "1")] == ["p3", "p4", "p5"]
    await writer.close()
    store.close()


async def test_through_the_log_a_killed_child_loses_nothing_between_batches(tmp_path: Path) -> None:
    store = Store.for_state_dir(tmp_path / "state")
    store.upgrade()
    writer = ProcessRowWriter(store)
    plog = PredictionLog(store, writer=writer, batch_size=50)
    for r in _records(0, 50):
        plog.offer(r)
    await plog.flush()
    child = writer.pid
    assert child is not None and plog.counters.written == 50
    os.kill(child, signal.SIGKILL)
    await _gone(writer)
    for r in _records(50, 50):
        plog.offer(r)
    await plog.flush()
    assert plog.counters.as_dict() == {"written": 100, "dropped": 0, "failed": 0, "sampled_out": 0}
    assert store.count_predictions("m", "1") == 100
    await writer.close()
    store.close()


async def test_a_database_the_child_cannot_open_fails_without_showing_the_password() -> None:
    store = Store("postgresql+psycopg://sluice:hunter2-secret@127.0.0.1:1/nowhere")
    writer = ProcessRowWriter(store)
    with pytest.raises(WriterProcessError) as caught:
        await writer.write(prediction_rows(_records(0, 1)))
    assert "could not open the database" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert writer.pid is None
    started = time.monotonic()
    with pytest.raises(WriterUnavailable, match="could not open the database"):  # the pause: no new child
        await writer.write(prediction_rows(_records(1, 1)))
    assert time.monotonic() - started < 0.2
    store.close()


async def test_a_child_that_dies_at_start_holds_the_log_and_is_not_started_for_every_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that cannot start (here a real interpreter that exits at once, as a broken install or an
    OOM kill at start would make it) must not cost a new interpreter for every batch, half a core each
    (measured: the gateway at 0.72x its usual req/s), nor lose the batches: the log holds them as for a
    database that is away, and a start is tried again after a pause that doubles while starts keep failing."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text("import os\nos._exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", str(broken))
    store = Store.for_state_dir(tmp_path / "state")
    store.upgrade()
    writer = ProcessRowWriter(store, start_again_s=0.3)
    with pytest.raises(WriterUnavailable, match="did not start"):
        await writer.write(prediction_rows(_records(0, 1)))
    with pytest.raises(WriterUnavailable, match="did not start"):  # within the pause: no second child
        await writer.write(prediction_rows(_records(0, 1)))
    assert writer.failed_starts == 1
    await asyncio.sleep(0.4)
    with pytest.raises(WriterUnavailable, match="did not start"):  # tried again, failed again: a longer pause
        await writer.write(prediction_rows(_records(0, 1)))
    assert writer.failed_starts == 2

    plog = PredictionLog(store, writer=writer, batch_size=10, flush_interval_s=0.05)
    plog.start()
    for r in _records(0, 10):
        plog.offer(r)
    await _until(lambda: plog.sink_unavailable, 10)
    monkeypatch.delenv("PYTHONPATH")  # the cause goes away
    await _until(lambda: plog.counters.written == 10, 10)
    assert plog.counters.as_dict() == {"written": 10, "dropped": 0, "failed": 0, "sampled_out": 0}
    assert writer.starts == 1 and writer.failed_starts == 0  # counted again from the first good start
    assert store.count_predictions("m", "1") == 10
    await plog.close()
    await writer.close()
    store.close()


async def test_a_child_that_cannot_be_spawned_holds_the_batch_and_pauses_starts(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")  # the spawn itself fails: an OSError
    writer = ProcessRowWriter(store, start_again_s=60)
    with pytest.raises(WriterUnavailable, match="could not be started: FileNotFoundError"):
        await writer.write(prediction_rows(_records(0, 1)))
    monkeypatch.undo()
    with pytest.raises(WriterUnavailable, match="could not be started"):  # within the pause
        await writer.write(prediction_rows(_records(0, 1)))
    assert writer.failed_starts == 1 and writer.pid is None


def test_the_child_leaves_with_a_gateway_killed_outright(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    build_tabular(repo / "tab" / "1" / "model.onnx", features=4, classes=2, seed=3)
    with gateway_process(repo, tmp=tmp_path) as gw:
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}
        for _ in range(5):
            assert httpx.post(f"{gw.http_url}/v2/models/tab/infer", json=body, timeout=10).status_code == 200
        wait_until(lambda: _children(gw.proc.pid, "gateway.storage.log_writer"), timeout=20, what="the writer process")
        children = _children(gw.proc.pid, "gateway.storage.log_writer")
        assert len(children) == 1
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in children), timeout=20, what="the orphaned writer to exit")


def _children(parent: int, needle: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and needle in cmdline:
            found.append(int(entry))
    return found


async def test_time_between_batches_is_not_spent_polling(store: Store) -> None:
    """An idle child blocks on its pipe: it uses no CPU while no batch comes. It has one thread: no
    BLAS pool (numpy's, started at import, spins on a core for a while)."""
    writer = ProcessRowWriter(store)
    await writer.write(prediction_rows(_records(0, 1)))
    pid = writer.pid
    assert pid is not None
    assert os.listdir(f"/proc/{pid}/task") == [str(pid)]

    def cpu() -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = cpu()
    await asyncio.sleep(1.0)
    assert cpu() - before < 0.05
    await writer.close()


@pytest.fixture
def pg_through_proxy(pg_url: str) -> Iterator[tuple[Store, TcpProxy]]:
    """A store on a schema of its own in the real PostgreSQL, reached through a TCP proxy the test can cut."""
    with postgres_behind_proxy(pg_url) as pg:
        store = Store(pg.through.render_as_string(hide_password=False))
        store.upgrade()
        try:
            yield store, pg.proxy
        finally:
            store.close()


async def _until(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


async def test_writing_resumes_promptly_once_the_database_answers_again(
    pg_through_proxy: tuple[Store, TcpProxy],
) -> None:
    """While the database is cut off the log probes it often and cheaply, so the records it holds are written
    soon after it is back, however long the outage was (they used to wait for a retry pause grown to 5 s)."""
    store, proxy = pg_through_proxy
    writer = ProcessRowWriter(store)
    plog = PredictionLog(store, writer=writer, batch_size=10, flush_interval_s=0.05)
    plog.start()
    for r in _records(0, 10):
        plog.offer(r)
    await _until(lambda: plog.counters.written == 10, 30)
    proxy.cut()
    for r in _records(10, 10):
        plog.offer(r)
    await _until(lambda: plog.sink_unavailable, 30)
    await asyncio.sleep(8.5)  # long enough for a pause that doubles on every failure to reach 5 s
    proxy.restore()
    restored = time.monotonic()
    await _until(lambda: plog.counters.written == 20, 30)
    resumed_s = time.monotonic() - restored
    assert resumed_s < 3.0, f"the held records were written {resumed_s:.1f} s after the database came back"
    assert store.count_predictions("m", "1") == 20
    await plog.close()
    await writer.close()
