"""The prediction log: every answered request as a record, written in batches off the hot path.

The data plane calls `PredictionLog.record` (or `offer`) after each request; that is O(1), never
blocks and never raises: the record goes onto a bounded in-memory queue, or, when the queue is full
(by record count or by tensor bytes), it is dropped and counted. A writer task hands the queue to
the sink (the gateway's store) in batches, in a worker thread, so neither JSON encoding nor the
database runs on the event loop. A failed write loses that batch; it is logged and counted, and the
log keeps going. `close()` (the SIGTERM path) drains what is queued within a time limit.

Sampling is per model and deterministic: a hash of the prediction id decides, so a prediction and
its shadow copies are either all logged or all not, and a repeated id gets the same verdict.

Records keep the request's numpy arrays by reference (they are read-only views of the request body
or the batch's outputs); `tensors_to_json` turns them into the stored form in the writer's thread:
``{"name": {"shape": [...], "datatype": "FP32", "data": [flat list]}}``. NaN and infinities are
stored as null (JSON has no such numbers).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from hashlib import blake2b
from typing import Any

import numpy as np
import orjson

from monitors.records import PredictionRecord, PredictionSink

log = logging.getLogger(__name__)

UTC = timezone.utc
MAX_ID_LENGTH = 256
"""Longest prediction id the log keeps (the store's key column): a longer one is counted as failed."""
ROUTE_SHADOW = "shadow"

_DUMPS = orjson.OPT_SERIALIZE_NUMPY
_FAILURE_LOG_EVERY_S = 10.0

_V2_BY_DTYPE: dict[np.dtype[Any], str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}
_DTYPE_BY_V2: dict[str, np.dtype[Any]] = {v: k for k, v in _V2_BY_DTYPE.items()}


# --- the stored form of tensors -----------------------------------------------------------------


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """The V2 datatype name of a numpy dtype; strings and objects are BYTES."""
    return _V2_BY_DTYPE.get(dtype, "BYTES")


def tensors_to_json(tensors: Mapping[str, np.ndarray]) -> str:
    """The stored JSON text of named tensors (run in the writer's thread, never on the event loop).

    The common case (numeric arrays) is one orjson call that writes the arrays natively; this runs
    once per input and output of every logged request, so it is kept to that.
    """
    try:
        doc = {
            name: {"shape": array.shape, "datatype": _V2_BY_DTYPE[array.dtype], "data": array.reshape(-1)}
            for name, array in tensors.items()
        }
        return orjson.dumps(doc, option=_DUMPS).decode()
    except (KeyError, AttributeError, TypeError, orjson.JSONEncodeError):
        # BYTES (object or string arrays), a strided view orjson cannot read, something not an array:
        # through Python values (slower, same result).
        return orjson.dumps({name: _tensor_doc(np.asarray(array)) for name, array in tensors.items()}).decode()


def _tensor_doc(array: np.ndarray) -> dict[str, Any]:
    flat = array.reshape(-1)
    return {
        "shape": list(array.shape),
        "datatype": v2_datatype(array.dtype),
        "data": [_jsonable(v) for v in flat.tolist()],
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def tensors_from_json(doc: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """Named tensors back from their stored JSON form (null values of float tensors come back as NaN)."""
    tensors: dict[str, np.ndarray] = {}
    for name, entry in (doc or {}).items():
        dtype = _DTYPE_BY_V2.get(entry.get("datatype", ""))
        data = entry.get("data", [])
        if dtype is not None and dtype.kind == "f":
            data = [math.nan if v is None else v for v in data]
        array = np.array(data, dtype=dtype if dtype is not None else object)
        tensors[name] = array.reshape(entry.get("shape", [len(data)]))
    return tensors


# --- ids and sampling ---------------------------------------------------------------------------


_id_key = os.urandom(16)
_id_counter = itertools.count()


def _new_id_key() -> None:
    global _id_key, _id_counter
    _id_key = os.urandom(16)
    _id_counter = itertools.count()


os.register_at_fork(after_in_child=_new_id_key)  # a forked child must not repeat its parent's ids


def new_prediction_id() -> str:
    """A response id for a caller that sent none: 32 hex digits, the time in milliseconds, then 80 bits
    that cannot be guessed (a keyed BLAKE2b of a counter, with a random key per process).

    Time first, so that ids the gateway makes arrive in index order: the store's key on the id then
    grows at its right edge instead of taking random inserts across the whole index, each of which
    dirties a page of its own (on SQLite, measured: 4.5 µs a row instead of 15-30 µs, growing with
    the table). No system call per id (uuid4 and os.urandom release the GIL for one, and a busy
    event loop then waits to get it back from the log's writer thread).
    """
    tail = blake2b(next(_id_counter).to_bytes(8, "little"), key=_id_key, digest_size=10).hexdigest()
    return "%012x%s" % (time.time_ns() // 1_000_000, tail)  # noqa: UP031 - the fastest form here


def sampled(prediction_id: str, rate: float) -> bool:
    """Whether this prediction is logged at `rate` (0..1): a hash of the id decides, so the verdict is
    the same for the request and its shadow copies, on every replica, and for a repeated id."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return zlib.crc32(prediction_id.encode()) < rate * 4294967296.0


# --- the log ------------------------------------------------------------------------------------


@dataclass
class LogCounters:
    """Records by fate since start-up; plain ints read at scrape time (nothing on the hot path but `+= 1`)."""

    written: int = 0
    """Handed to the sink in a batch that succeeded (a duplicate id the store ignored counts too)."""
    dropped: int = 0
    """Refused because the queue was full (or the log was closed)."""
    failed: int = 0
    """Lost in a batch the sink failed to write, or with an id too long to store."""
    sampled_out: int = 0
    """Not logged: the model's sample rate passed over them."""

    def as_dict(self) -> dict[str, int]:
        return {
            "written": self.written,
            "dropped": self.dropped,
            "failed": self.failed,
            "sampled_out": self.sampled_out,
        }


@dataclass(frozen=True)
class Retention:
    """How long and how much of the log to keep; pruned every `every_s` seconds."""

    max_age_s: float | None = 30 * 86400.0
    max_rows: int | None = None
    """Across every model: the newest rows are kept."""
    every_s: float = 300.0


class PredictionLog:
    """A bounded queue of prediction records and the task that writes them to a `PredictionSink`.

    `offer`/`record` must be called on the event loop's thread (they are not thread-safe: the data
    plane and the shadow dispatcher both run on the loop).
    """

    def __init__(
        self,
        sink: PredictionSink,
        *,
        capacity: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        retention: Retention | None = None,
    ) -> None:
        """`capacity` records and `max_bytes` of tensor data bound the queue (records hold the request's
        arrays until written, so a count alone would not bound memory when bodies are large)."""
        if capacity < 1 or batch_size < 1 or flush_interval_s <= 0:
            raise ValueError("capacity and batch_size must be at least 1, flush_interval_s above 0")
        self.sink = sink
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retention = retention
        self.counters = LogCounters()
        self._queue: deque[tuple[PredictionRecord, int]] = deque()
        self._queued_bytes = 0
        self._lock = asyncio.Lock()
        """Held while a batch is with the sink: one write at a time, and `flush` waits for the one in flight."""
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._last_failure_log = -math.inf
        self._failures_unlogged = 0

    # -- hot path ---------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Records waiting to be written."""
        return len(self._queue)

    def record(
        self,
        prediction_id: str,
        model: str,
        version: str,
        route: str,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        latency_s: float,
        outcome: str,
        sample_rate: float = 1.0,
    ) -> bool:
        """Sample, build and offer one record; True when it was queued. Never blocks, never raises."""
        try:
            if sample_rate < 1.0 and not sampled(prediction_id, sample_rate):
                self.counters.sampled_out += 1
                return False
            record = PredictionRecord(
                prediction_id, datetime.now(UTC), model, version, route, inputs, outputs, latency_s, outcome
            )
        except Exception:  # an observer never breaks a request
            log.exception("prediction log: cannot build a record")
            self.counters.failed += 1
            return False
        return self.offer(record)

    def offer(self, record: PredictionRecord) -> bool:
        """Queue a record; False (and counted) when the queue is full or closed. O(1), never raises."""
        try:
            if len(record.id) > MAX_ID_LENGTH:
                self.counters.failed += 1
                return False
            size = 0
            for array in record.inputs.values():
                size += array.nbytes
            for array in record.outputs.values():
                size += array.nbytes
            if self._closed or len(self._queue) >= self.capacity or self._queued_bytes + size > self.max_bytes:
                self.counters.dropped += 1
                return False
            self._queue.append((record, size))
            self._queued_bytes += size
            if len(self._queue) >= self.batch_size:
                self._wake.set()
            return True
        except Exception:  # an observer never breaks a request
            log.exception("prediction log: cannot queue a record")
            self.counters.dropped += 1
            return False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer (and the pruner when retention is set) on the running loop."""
        if self._writer is not None:
            return
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._run(), name="prediction-log-writer")
        if self.retention is not None and (self.retention.max_age_s is not None or self.retention.max_rows is not None):
            self._pruner = loop.create_task(self._prune_loop(self.retention), name="prediction-log-pruner")

    async def flush(self) -> None:
        """Write everything queued now (waiting for a batch already with the sink) before returning."""
        await self._drain()

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking records and write what is queued, for at most `timeout_s` (the SIGTERM path).

        What cannot be written in time is counted as dropped and logged.
        """
        if self._closed:
            return
        self._closing = True
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        self._wake.set()
        try:
            if self._writer is not None:
                await asyncio.wait_for(asyncio.shield(self._writer), timeout_s)
            else:
                await asyncio.wait_for(self._drain(), timeout_s)
        except TimeoutError:
            log.error("prediction log: %d records not written within %.1f s of shutdown", self.depth, timeout_s)
            if self._writer is not None:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
        self._closed = True
        if self._queue:
            self.counters.dropped += len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        log.info("prediction log closed", extra=self.counters.as_dict())

    async def prune(self, *, older_than: datetime | None, keep_rows: int | None) -> int:
        """Delete records older than `older_than` and beyond the newest `keep_rows`; the number deleted."""
        return await asyncio.to_thread(self.sink.prune_predictions, older_than=older_than, keep_rows=keep_rows)

    # -- the writer -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._closing and len(self._queue) < self.batch_size:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            try:
                await self._drain()
            except Exception:  # a bug here must not stop the log: the queue would only fill and drop
                log.exception("prediction log: writer error")
            if self._closing and not self._queue:
                return

    async def _drain(self) -> None:
        async with self._lock:
            while self._queue:
                await self._write(self._take())

    def _take(self) -> list[PredictionRecord]:
        batch: list[PredictionRecord] = []
        taken = 0
        queue = self._queue
        while queue and len(batch) < self.batch_size:
            record, size = queue.popleft()
            batch.append(record)
            taken += size
        self._queued_bytes -= taken
        return batch

    async def _write(self, batch: list[PredictionRecord]) -> None:
        try:
            await asyncio.to_thread(self.sink.write_predictions, batch)
        except asyncio.CancelledError:
            self.counters.failed += len(batch)
            raise
        except Exception as exc:
            self.counters.failed += len(batch)
            self._log_failure(len(batch), exc)
            return
        self.counters.written += len(batch)

    def _log_failure(self, lost: int, exc: Exception) -> None:
        """At most one line per _FAILURE_LOG_EVERY_S: a broken database must not flood the log."""
        self._failures_unlogged += lost
        now = time.monotonic()
        if now - self._last_failure_log >= _FAILURE_LOG_EVERY_S:
            log.error(
                "prediction log: writing failed, %d records lost since the last report: %s",
                self._failures_unlogged,
                exc,
            )
            self._last_failure_log = now
            self._failures_unlogged = 0

    async def _prune_loop(self, retention: Retention) -> None:
        while True:
            await asyncio.sleep(retention.every_s)
            older_than = (
                datetime.now(UTC) - timedelta(seconds=retention.max_age_s) if retention.max_age_s is not None else None
            )
            try:
                deleted = await self.prune(older_than=older_than, keep_rows=retention.max_rows)
            except Exception as exc:
                log.error("prediction log: pruning failed: %s", exc)
                continue
            if deleted:
                log.info("prediction log: pruned %d records", deleted)
