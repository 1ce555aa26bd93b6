"""CPU cost of the prediction log per record: the hot path, the handover, the database.

    python -m loadtests.log_cost                      # SQLite in a temporary directory
    python -m loadtests.log_cost --pg postgresql+psycopg://postgres@127.0.0.1:5432/test
    python -m loadtests.log_cost --prefill 200000 --batches 100 --profile
    python -m loadtests.log_cost --batch 50                      # what small batches cost a record
    python -m loadtests.log_cost --per-batch 2                   # runtime batches of 2 requests (default 16)

Records look like the reference benchmark's (loadtests/bench.py): one input "input" float32 [1, 32],
one output "output" float32 [1, 8], ids as the data plane makes them (`batch_request_id`), model "mlp", version
"1", route "stable". Figures are CPU time of the measuring thread (`time.thread_time_ns`), not wall
time, so they hold on a busy 2-core box where wall-clock benchmarks do not; the sqlite3 driver runs
SQLite in the calling thread, so the database's CPU is in the figure too. With --pg the PostgreSQL
server's CPU for the same work (its backend process, read from /proc) is reported beside it.

Reported, in microseconds per record:

- hot path: `PredictionLog.record` as the data plane calls it (encode the tensors, queue a row), on
  the event loop;
- queued, taken and pickled: everything the event loop does with a record, both ways it can be logged:
  alone (`record`: encoded at once) or as one of --per-batch requests of a runtime batch
  (`record_batched`: a slot on the batch's entry, the batch's tensors encoded once when the batch of 500
  is taken); beside each, what the writer process does before the database (unpickling, and the store's
  form of the batch: `gateway.storage.prediction_batches.stored_batches`);
- pickle: a log batch (--batch requests, 500 as the log's default, in runtime batches of --per-batch)
  pickled and unpickled: the handover to the writer process, the first half of it on the event loop;
- database: `Store.write_log_items` of that batch into a log that already holds --prefill requests: what
  the writer process (`gateway.storage.log_writer`) does, on another core, without the serving process's
  GIL (or the writer thread, with `prediction_log_writer: thread`).

At ~5,000-9,000 req/s on 2 cores, the issue's 5% budget is 5-10 µs of the event loop's time per
logged request: the hot path and the pickling count against it, the database (in its own process)
only through the other core. --profile prints cProfile's view of the writes (Python-level only:
SQLite's C is one line).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pickle
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from gateway.storage.prediction_batches import stored_batches
from gateway.storage.store import Store
from monitors.log_batches import BatchEntry, BatchFrame, BatchTensors
from monitors.prediction_log import (
    PredictionLog,
    batch_frame,
    batch_request_id,
    new_prediction_id,
    tensors_to_bytes,
)
from monitors.records import PredictionRow

UTC = timezone.utc
BATCH = 500


class NullSink:
    """A sink that is never called (the hot-path measurement does not start the writer)."""

    def write_log_items(self, items: Sequence[PredictionRow | BatchFrame]) -> None:
        pass

    def ping(self) -> None:
        pass

    def prune_predictions(self, *, older_than: datetime | None, keep_rows: int | None) -> int:
        return 0

    def write_labels(self, model: str, labels: Sequence[Any]) -> Any:
        raise NotImplementedError

    def labeled_predictions(
        self, model: str, version: str, *, since: datetime | None = None, limit: int = 10_000
    ) -> Any:
        return []


def _tensors(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = rng.random((1, 32), dtype=np.float32)
    x.flags.writeable = False  # the gateway's inputs are read-only views of the request body
    batch = rng.random((4, 8), dtype=np.float32)
    return {"input": x}, {"output": batch[1:2]}  # an output is a row of the batch's output


def hot_path(n: int) -> float:
    """µs of CPU per `PredictionLog.record` call (queue emptied between rounds, as the writer would)."""
    rng = np.random.default_rng(1)
    plog = PredictionLog(NullSink(), capacity=10_000, batch_size=10_000)
    pool = [_tensors(rng) for _ in range(256)]
    ids = [new_prediction_id() for _ in range(n)]
    record = plog.record
    spent = 0
    for start in range(0, n, 5_000):
        t0 = time.thread_time_ns()
        for i in range(start, min(n, start + 5_000)):
            inputs, outputs = pool[i & 255]
            record(ids[i], "mlp", "1", "stable", inputs, outputs, 0.0021, "ok", 1.0)
        spent += time.thread_time_ns() - t0
        plog._queue.clear()
        plog._queued = plog._queued_bytes = 0
    return spent / n / 1000


def serving_side(n: int, per_batch: int) -> dict[str, float]:
    """µs of the event loop's CPU per record for everything the serving process does with it, both ways: logged
    alone (`record`: encode, queue) or as a request of a runtime batch of `per_batch` requests
    (`record_batched`: a slot on the batch's entry), then taken in batches of 500 and pickled for the writer
    process as `PredictionLog._write` does. Beside it, the writer's CPU to unpickle them and put them in the
    store's form (`gateway.storage.prediction_batches.stored_batches`), on the other core."""
    rng = np.random.default_rng(3)
    n -= n % per_batch  # whole runtime batches only
    figures: dict[str, float] = {}
    for way in ("alone", "batched"):
        plog = PredictionLog(NullSink(), capacity=10_000, batch_size=BATCH)
        ids = [new_prediction_id() for _ in range(n)]
        spent = expand_ns = 0
        for start in range(0, n, per_batch):
            x = rng.random((per_batch, 32), dtype=np.float32)
            y = rng.random((per_batch, 8), dtype=np.float32)
            tensors = BatchTensors({"input": x}, {"output": y}, per_batch, per_batch == 1)
            t0 = time.thread_time_ns()
            for row in range(per_batch):
                i = start + row
                if way == "alone":
                    plog.record(
                        ids[i],
                        "mlp",
                        "1",
                        "stable",
                        {"input": x[row : row + 1]},
                        {"output": y[row : row + 1]},
                        0.0021,
                        "ok",
                        1.0,
                    )
                else:
                    plog.record_batched(tensors, row, row + 1, ids[i], "mlp", "1", "stable", None, 0.0021, 1.0)
            payload = None
            if plog.depth >= BATCH:
                batch = plog._take()
                items = [batch_frame(item) if isinstance(item, BatchEntry) else item for item in batch]
                payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
            spent += time.thread_time_ns() - t0
            if payload is not None:
                t0 = time.thread_time_ns()
                stored_batches(pickle.loads(payload))
                expand_ns += time.thread_time_ns() - t0
        figures[f"loop, {way}"] = spent / n / 1000
        figures[f"writer, {way}"] = expand_ns / n / 1000
    return figures


def _backend_cpu_ns(store: Store) -> Callable[[], int] | None:
    """The PostgreSQL backend's CPU so far (utime + stime), when the server runs on this machine."""
    if store.engine.dialect.name != "postgresql":
        return None
    with store.engine.connect() as conn:
        pid = conn.exec_driver_sql("select pg_backend_pid()").scalar_one()
    path = Path(f"/proc/{pid}/stat")
    if not path.exists():
        return None
    tick = 1e9 / os.sysconf("SC_CLK_TCK")

    def read() -> int:
        fields = path.read_text().rsplit(")", 1)[1].split()
        return int((int(fields[11]) + int(fields[12])) * tick)

    return read


def make_frames(n: int, per_batch: int, start: datetime, rng: np.random.Generator) -> list[BatchFrame]:
    """`n` requests as the writer process receives them: runtime batches of `per_batch` (a lone request's
    tensors are the batch's as they are)."""
    frames = []
    for first in range(0, n, per_batch):
        rows = min(per_batch, n - first)
        x = rng.random((rows, 32), dtype=np.float32)
        y = rng.random((rows, 8), dtype=np.float32)
        tensors = BatchTensors({}, {}, rows, rows == 1)
        # Ids as the data plane makes them: a batch's requests' from its tag (no key row), a lone request's its own.
        ids = [new_prediction_id()] if rows == 1 else [batch_request_id(tensors, i) for i in range(rows)]
        slots = [(ids[i], "stable", 0.0021, i, i + 1, None) for i in range(rows)]
        at = (start + timedelta(microseconds=131 * first)).timestamp()
        x_bytes, y_bytes = tensors_to_bytes({"input": x}), tensors_to_bytes({"output": y})
        frames.append(BatchFrame("mlp", "1", at, x_bytes, y_bytes, rows == 1, slots, tensors.tag))
    return frames


def prefill_store(store: Store, rows: int, per_batch: int) -> None:
    rng = np.random.default_rng(2)
    start = datetime.now(UTC) - timedelta(days=1)
    done = 0
    while done < rows:
        n = min(5_000, rows - done)
        store.write_log_items(make_frames(n, per_batch, start + timedelta(microseconds=131 * done), rng))
        done += n
    store.engine.dispose()  # one pooled connection from here on: the backend whose CPU is read below


def store_cost(
    store: Store, batches: int, batch_size: int, per_batch: int, profile: bool, seed: int
) -> dict[str, float]:
    """One round: `batches` log batches of `batch_size` new requests written, their mean cost per request."""
    rng = np.random.default_rng(seed)
    backend = _backend_cpu_ns(store)
    later = datetime.now(UTC) + timedelta(hours=seed)
    batch_list = [make_frames(batch_size, per_batch, later + timedelta(seconds=i), rng) for i in range(batches)]
    enc_ns: list[int] = []
    db_ns: list[int] = []
    server_ns: list[int] = []
    profiler = cProfile.Profile() if profile else None
    for frames in batch_list:
        t0 = time.thread_time_ns()
        pickle.loads(pickle.dumps(frames, protocol=pickle.HIGHEST_PROTOCOL))  # the handover and its receipt
        enc_ns.append(time.thread_time_ns() - t0)
        s0 = backend() if backend else 0
        t0 = time.thread_time_ns()
        if profiler:
            profiler.enable()
        store.write_log_items(frames)
        if profiler:
            profiler.disable()
        db_ns.append(time.thread_time_ns() - t0)
        if backend:
            server_ns.append(backend() - s0)
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
    per = 1000 * batch_size
    # Means: every few commits one also checkpoints the WAL.
    result = {
        "pickle": statistics.mean(enc_ns) / per,
        "database": statistics.mean(db_ns) / per,
    }
    if server_ns:
        result["server (postgres backend)"] = statistics.mean(server_ns) / per
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, default=200_000, help="rows in the table before measuring")
    parser.add_argument("--batches", type=int, default=100, help="batches measured")
    parser.add_argument("--batch", type=int, default=BATCH, help="records a batch (the log's batch_size)")
    parser.add_argument("--hot", type=int, default=200_000, help="PredictionLog.record calls measured")
    parser.add_argument("--per-batch", type=int, default=16, help="requests a runtime batch (the batched path)")
    parser.add_argument("--pg", metavar="URL", help="PostgreSQL instead of SQLite (a fresh schema, dropped after)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements repeated; the median is reported")
    parser.add_argument("--profile", action="store_true", help="cProfile the measured writes")
    args = parser.parse_args()

    hot = [hot_path(args.hot) for _ in range(args.rounds)]
    print(f"hot path   PredictionLog.record: {statistics.median(hot):6.2f} µs/record  (rounds: {_fmt(hot)})")
    sides = [serving_side(args.hot, args.per_batch) for _ in range(args.rounds)]
    print(f"queued, taken and pickled, {args.per_batch} requests a runtime batch (median round):")
    for name in sides[0]:
        figures = [r[name] for r in sides]
        print(f"  {name:26s} {statistics.median(figures):6.2f} µs/record  (rounds: {_fmt(figures)})")
    with tempfile.TemporaryDirectory() as tmp:
        schema = None
        if args.pg:
            schema = f"log_cost_{os.getpid()}"
            admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            store = Store(args.pg, connect_args={"options": f"-csearch_path={schema}"})
        else:
            store = Store(f"sqlite:///{Path(tmp) / 'sluice.db'}")
        try:
            store.upgrade()
            prefill_store(store, args.prefill, args.per_batch)
            rounds = [
                store_cost(store, args.batches, args.batch, args.per_batch, args.profile, seed)
                for seed in range(args.rounds)
            ]
        finally:
            store.close()
            if schema is not None:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()
    engine = "PostgreSQL" if args.pg else "SQLite"
    print(
        f"{engine}, batches of {args.batch} requests ({args.per_batch} a runtime batch) into {args.prefill:,} "
        f"({args.batches} a round, median round):"
    )
    for name in rounds[0]:
        figures = [r[name] for r in rounds]
        print(f"  {name:26s} {statistics.median(figures):6.2f} µs/record  (rounds: {_fmt(figures)})")


def _fmt(figures: list[float]) -> str:
    return ", ".join(f"{f:.2f}" for f in figures)


if __name__ == "__main__":
    main()
