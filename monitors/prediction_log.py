"""The prediction log: every answered request as a record, written in batches off the hot path.

The data plane calls `PredictionLog.record` (or `offer`) after each request; that is O(1), never
blocks and never raises: the record goes onto a bounded in-memory queue, or, when the queue is full
(by record count or by tensor bytes), it is dropped and counted. A request answered by a runtime
batch is queued with `record_batched`: a small tuple on the batch's entry, the batch's arrays held
once for all of its requests and expanded into rows by the writer (`monitors.log_batches`,
`expand_items`). Any other record (a failure, `offer`) is queued as a `PredictionRow`, its tensors
already encoded. A writer task takes the queue in batches of
`batch_size` (a partial batch only after `flush_interval_s`). With a `RowWriter` (the gateway's
writer process, `gateway.storage.log_writer`) it hands each batch over and awaits the process, which does
the database work: no second thread of the serving process competes with the loop for the GIL.
Without one, it writes to the sink in a worker thread. A failed write loses that batch; it is
logged and counted, and the log keeps going. A sink that is only *unavailable* (`SinkUnavailable`: its
database cut off, its disk full) loses nothing: the batch is held, the database is probed every
`PROBE_INTERVAL_S` (a `SELECT 1`, no batch sent) and the held batch written as soon as it answers; new
records queue behind it. `capacity` bounds every record the log holds in memory: queued, held, and the
batch with the sink. Beyond it, with a spool (`RowSpool`, the gateway's `gateway.storage.spool`), the
oldest queued batch is spilled to local disk and written back first, in order, when the sink takes
writes again; without one, or once the spool is full, new records are dropped and counted. Requests
are never blocked. `close()` (the SIGTERM path) drains what is queued within a time limit; what it
cannot write then (or at once, while the sink is away or the spool holds older records) goes to the
spool, for the next start to write, or is counted as dropped.

Sampling is per model and deterministic: a hash of the prediction id decides, so a prediction and
its shadow copies are either all logged or all not, and a repeated id gets the same verdict.

`tensors_to_bytes` is the stored form of a record's tensors: a small header per tensor and its
raw little-endian bytes, so NaN, infinities and every bit of the values are kept. A set with a
BYTES tensor is stored as its JSON text instead, as every row was before store migration 3;
`tensors_from_bytes` reads both. Readers that want JSON get
``{"name": {"shape": [...], "datatype": "FP32", "data": [flat list]}}`` (`stored_tensors_to_json`),
with NaN and infinities as null (JSON has no such numbers).

All of this but the sink's own work runs on the event loop, for every logged request:
`python -m loadtests.log_cost` measures the CPU of each step per record, and
`python -m loadtests.ab` what it costs the gateway's req/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import struct
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import numpy as np
import orjson

from monitors.log_batches import BatchEntry, BatchFrame, BatchTensors, Packed, spoolable
from monitors.records import (
    LogItem,
    PredictionRecord,
    PredictionRow,
    PredictionSink,
    RowSpool,
    RowWriter,
    SinkUnavailable,
)

log = logging.getLogger(__name__)

UTC = timezone.utc
MAX_ID_LENGTH = 256
"""Longest prediction id the log keeps (the store's key column): a longer one is counted as failed."""
ROUTE_SHADOW = "shadow"

_DUMPS = orjson.OPT_SERIALIZE_NUMPY
_FAILURE_LOG_EVERY_S = 10.0
PROBE_INTERVAL_S = 0.25
"""While the sink is unavailable it is probed this often (a round trip, no batch sent), so writing resumes
within about this long after it is back. A growing pause (up to 5 s, as before) left records made after
the restore to be dropped while the log still waited."""
SPILL_PAUSE_S = 1.0
"""After the spool refused a batch (full, or the disk failing), how long the log drops new records before
asking it again: a refused batch was encoded for nothing, on the request path."""

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
    """The JSON text of named tensors: ``{"name": {"shape": [...], "datatype": "FP32", "data": [...]}}``.

    What readers get (`stored_tensors_to_json`), and the stored form of a set with a BYTES tensor.
    Numeric arrays are written by orjson natively, whatever their memory layout (float32 in its
    shortest form); BYTES (object or string arrays) through Python values, as UTF-8 text.
    """
    return orjson.dumps({name: _json_entry(array) for name, array in tensors.items()}, option=_DUMPS).decode()


def _json_entry(array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array)
    datatype = _V2_BY_DTYPE.get(array.dtype)
    if datatype is None:  # BYTES, or a byte order orjson cannot read
        return _tensor_doc(array)
    return {"shape": array.shape, "datatype": datatype, "data": np.ascontiguousarray(array).reshape(-1)}


def _tensor_doc(array: np.ndarray) -> dict[str, Any]:
    flat = array.reshape(-1)
    return {
        "shape": list(array.shape),
        "datatype": v2_datatype(array.dtype.newbyteorder("=")),
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


# The binary form: what the store keeps. One byte, TENSORS_V1, then for each tensor a header and its
# raw little-endian data in C order:
#     u16 name length, name (UTF-8), u8 datatype code, u8 rank, rank x u64 dimensions, data
# The data's length follows from the dimensions and the datatype. A set of tensors with a BYTES one
# (or a dtype not in the table) is stored as its JSON text instead, which begins with "{"; so does a
# row written before the binary form existed: `tensors_from_bytes` reads both.

TENSORS_V1 = b"\x01"
_CODES: tuple[np.dtype[Any], ...] = tuple(_V2_BY_DTYPE)
_CODE_BY_DTYPE: dict[np.dtype[Any], int] = {dtype: code for code, dtype in enumerate(_CODES)}
_U16 = struct.Struct("<H")
_LITTLE_ENDIAN = sys.byteorder == "little"
_headers: dict[tuple[str, np.dtype[Any], tuple[int, ...]], bytes] = {}
"""Header bytes by (name, dtype, shape): a model's tensors repeat the same few."""
_tagged: dict[tuple[str, np.dtype[Any], tuple[int, ...]], bytes] = {}
"""The same, with TENSORS_V1 in front: the whole prefix of a set of one tensor."""
_MAX_HEADERS = 4096


def _header(name: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    if not _LITTLE_ENDIAN:  # the binary form is little-endian: a big-endian host stores JSON text
        raise KeyError(dtype)
    code = _CODE_BY_DTYPE[dtype]  # KeyError: BYTES, or a non-native byte order
    encoded = name.encode()
    head = _U16.pack(len(encoded)) + encoded + struct.pack(f"<BB{len(shape)}Q", code, len(shape), *shape)
    if len(_headers) >= _MAX_HEADERS:
        _headers.clear()
        _tagged.clear()
    _headers[(name, dtype, shape)] = head
    return head


def tensors_to_bytes(tensors: Mapping[str, np.ndarray]) -> bytes:
    """The stored form of named tensors: raw array bytes behind a small header (run in the writer's
    thread). Per tensor that is a cached header and one `tobytes()`, no per-value work: NaN,
    infinities and every bit of the values are kept. Tensors that have no fixed-width datatype
    (BYTES) make the whole set fall back to its JSON text."""
    headers = _headers
    try:
        if len(tensors) == 1:  # the common case, a fifth cheaper: the cached header carries the tag
            for name, array in tensors.items():
                shape = array.shape
                head = _tagged.get((name, array.dtype, shape))
                if head is None:
                    head = _tagged[(name, array.dtype, shape)] = TENSORS_V1 + _header(name, array.dtype, shape)
                return head + array.tobytes()
        parts = [TENSORS_V1]
        for name, array in tensors.items():
            shape = array.shape
            head = headers.get((name, array.dtype, shape))
            if head is None:
                head = _header(name, array.dtype, shape)
            parts.append(head)
            parts.append(array.tobytes())
    except (KeyError, AttributeError, TypeError, UnicodeEncodeError, struct.error):
        return tensors_to_json(tensors).encode()
    return b"".join(parts)


def tensors_from_bytes(blob: bytes | str | None) -> dict[str, np.ndarray]:
    """Named tensors back from their stored form: the binary form, or JSON text (the fallback, and rows
    stored before the binary form). Arrays are fresh and writable."""
    if not blob:
        return {}
    if isinstance(blob, str):
        return tensors_from_json(orjson.loads(blob))
    view = memoryview(blob)
    if view[:1] != TENSORS_V1:
        return tensors_from_json(orjson.loads(view))
    tensors: dict[str, np.ndarray] = {}
    for name, code, shape, offset, size in _binary_tensors(view):
        dtype = _CODES[code].newbyteorder("<")
        array = np.frombuffer(view, dtype=dtype, count=size // dtype.itemsize, offset=offset).reshape(shape)
        tensors[name] = array.astype(_CODES[code], copy=True)
    return tensors


def _binary_tensors(view: memoryview) -> Iterator[tuple[str, int, tuple[int, ...], int, int]]:
    """Each tensor of the binary form (after its tag): name, dtype code, shape, and where its bytes lie
    (offset, size)."""
    offset = 1
    end = len(view)
    while offset < end:
        (length,) = _U16.unpack_from(view, offset)
        offset += 2
        name = bytes(view[offset : offset + length]).decode()
        offset += length
        code, rank = view[offset], view[offset + 1]
        offset += 2
        shape = struct.unpack_from(f"<{rank}Q", view, offset)
        offset += 8 * rank
        size = math.prod(shape) * _CODES[code].itemsize
        yield name, code, shape, offset, size
        offset += size


def stored_tensors_to_json(blob: bytes | str | None) -> dict[str, Any]:
    """The JSON form (``{"name": {"shape", "datatype", "data"}}``, NaN and infinities as null) of stored
    tensors, for readers that take JSON: exactly what the store kept before the binary form."""
    if not blob:
        return {}
    if isinstance(blob, str):
        doc: dict[str, Any] = orjson.loads(blob)
        return doc
    if blob[:1] != TENSORS_V1:
        doc = orjson.loads(blob)
        return doc
    doc = orjson.loads(tensors_to_json(tensors_from_bytes(blob)))
    return doc


# --- the stored form of records ----------------------------------------------------------------


def prediction_rows(records: Sequence[PredictionRecord]) -> list[PredictionRow]:
    """Records in the store's form (what `PredictionLog` queues for each record it takes); the
    database work then runs wherever the rows are sent."""
    encode = tensors_to_bytes
    return [
        (
            r.model,
            r.id,
            r.version,
            r.route,
            r.at.timestamp(),
            float(r.latency_s),
            r.outcome,
            encode(r.inputs),
            encode(r.outputs),
        )
        for r in records
    ]


def expand_items(items: Sequence[LogItem | BatchFrame]) -> list[PredictionRow]:
    """Rows as they would have been logged alone, byte for byte, from what the log queues: rows as they are,
    and each batch's requests (`monitors.log_batches`) expanded. The store keeps a batch as one row
    (`gateway.storage.prediction_batches`) and its readers expand it with `slot_rows`; this is for the spool
    (which keeps rows) and for what compares the two."""
    rows: list[PredictionRow] = []
    for item in items:
        if isinstance(item, tuple) and not isinstance(item, BatchFrame):
            rows.append(item)
            continue
        frame = batch_frame(item) if isinstance(item, BatchEntry) else item
        rows += slot_rows(frame.model, frame.version, frame.at, frame.inputs, frame.outputs, frame.whole, frame.slots)
    return rows


def slot_rows(
    model: str,
    version: str,
    at: Any,
    inputs: Packed,
    outputs: Packed,
    whole: bool,
    slots: Sequence[Sequence[Any]],
) -> list[tuple[Any, ...]]:
    """Each slot of a batch as its row (`PredictionRow`'s order, with `at` as given): its inputs and outputs cut
    out of the batch's. A slot is (id, route, latency_s, start, stop, wanted), and an outcome after them where
    it is not ok (the stored form, `gateway.storage.prediction_batches`, keeps a lone failure as a batch of one)."""
    inputs_of = _row_encoder(inputs, whole)
    outputs_of = _row_encoder(outputs, whole)
    rows: list[tuple[Any, ...]] = []
    for slot in slots:
        id_, route, latency_s, start, stop, wanted = slot[:6]
        if wanted is None:
            encoded_out = outputs_of(start, stop)
        else:
            arrays = _unpacked(outputs)
            mine = arrays if whole else {name: array[start:stop] for name, array in arrays.items()}
            encoded_out = tensors_to_bytes({name: mine[name] for name in wanted if name in mine})
        outcome = slot[6] if len(slot) > 6 else "ok"
        rows.append((model, id_, version, route, at, latency_s, outcome, inputs_of(start, stop), encoded_out))
    return rows


def batch_frame(entry: BatchEntry) -> BatchFrame:
    """The entry in the form that crosses to the writer: plain values, nothing of the log's (on the event loop)."""
    t = entry.tensors
    return BatchFrame(
        entry.model, entry.version, entry.at, _packed(t.inputs), _packed(t.outputs), t.whole, entry.slots, t.tag
    )


def _packed(tensors: Mapping[str, np.ndarray]) -> Packed:
    encoded = tensors_to_bytes(tensors)
    return encoded if encoded[:1] == TENSORS_V1 else dict(tensors)


def _unpacked(packed: Packed) -> Mapping[str, np.ndarray]:
    return tensors_from_bytes(packed) if isinstance(packed, bytes) else packed


def _row_encoder(packed: Packed, whole: bool) -> Callable[[int, int], bytes]:
    """`tensors_to_bytes` of rows start:stop of a batch's tensors, for each request of the batch: a request's
    bytes are a slice of the batch's behind its own header (cached by shape), read in place from the batch's
    stored form, instead of a view, a dict and a `tobytes` per tensor per request (2.3 against 0.6 µs a record,
    in the writer). Tensors without a fixed width (their arrays crossed as they are) go the long way."""
    if isinstance(packed, dict):
        if whole:
            encoded = tensors_to_bytes(packed)
            return lambda start, stop: encoded
        return lambda start, stop: tensors_to_bytes({n: a[start:stop] for n, a in packed.items()})
    if whole:
        return lambda start, stop: packed
    view = memoryview(packed)
    plain: list[tuple[str, np.dtype[Any], tuple[int, ...], int, bytes]] = []
    for name, code, shape, offset, size in _binary_tensors(view):
        if not shape:  # no batch dimension (only a lone request's may lack one): sliced as an array would be
            arrays = _unpacked(packed)
            return lambda start, stop: tensors_to_bytes({n: a[start:stop] for n, a in arrays.items()})
        width = size // shape[0] if shape[0] else 0
        plain.append((name, _CODES[code], tuple(shape[1:]), width, bytes(view[offset : offset + size])))
    if len(plain) == 1:
        name, dtype, tail, width, raw = plain[0]
        heads: dict[int, bytes] = {}  # by row count: a batch's requests mostly have the same

        def one(start: int, stop: int) -> bytes:
            head = heads.get(stop - start)
            if head is None:
                head = heads[stop - start] = TENSORS_V1 + _header(name, dtype, (stop - start, *tail))
            return head + raw[start * width : stop * width]

        return one

    def several(start: int, stop: int) -> bytes:
        parts = [TENSORS_V1]
        for name, dtype, tail, width, raw in plain:
            key = (name, dtype, (stop - start, *tail))
            head = _headers.get(key)
            if head is None:
                head = _header(*key)
            parts.append(head)
            parts.append(raw[start * width : stop * width])
        return b"".join(parts)

    return several


def _write_items(sink: PredictionSink, items: Sequence[LogItem | BatchFrame]) -> None:
    sink.write_log_items([batch_frame(item) if isinstance(item, BatchEntry) else item for item in items])


def spooled_form(items: Sequence[LogItem]) -> list[PredictionRow | BatchFrame]:
    """Queued items as the spool keeps them: a runtime batch as its frame (its tensors once, as the writer would
    get them), where the spool can hold it (`gateway.storage.spool.spoolable`), else as its requests' rows."""
    out: list[PredictionRow | BatchFrame] = []
    for item in items:
        if isinstance(item, BatchEntry):
            frame = batch_frame(item)
            if spoolable(frame):
                out.append(frame)
            else:
                out += expand_items([frame])
        else:
            out.append(item)
    return out


def _records_in(item: LogItem | BatchFrame) -> int:
    """The requests an item holds: an entry's or a spooled batch's slots, one a row."""
    return len(item.slots) if isinstance(item, BatchEntry | BatchFrame) else 1


def _bytes_in(item: LogItem) -> int:
    return item.nbytes if isinstance(item, BatchEntry) else len(item[7]) + len(item[8])


# --- ids and sampling ---------------------------------------------------------------------------


_ID_POOL = 512
"""Random tails drawn at once: one system call per this many ids."""
_id_pool = ""
_id_at = 0


def _new_id_pool() -> None:
    global _id_pool, _id_at
    _id_pool, _id_at = "", 0


os.register_at_fork(after_in_child=_new_id_pool)  # a forked child must not repeat its parent's ids


def new_prediction_id() -> str:
    """A response id for a caller that sent none: 32 hex digits, the time in milliseconds, then 80 random
    bits (from `os.urandom`, drawn for 512 ids at a time: no system call per id, and half the time of a
    keyed BLAKE2b of a counter, measured: 0.44 against 0.86 µs).

    Time first, so that ids the gateway makes arrive in index order: the store's key on the id then
    grows at its right edge instead of taking random inserts across the whole index, each of which
    dirties a page of its own (on SQLite, measured: 4.5 µs a row instead of 15-30 µs, growing with
    the table).
    """
    return "%012x%s" % (time.time_ns() // 1_000_000, _random_hex(20))  # noqa: UP031 - the fastest form here


def _random_hex(digits: int) -> str:
    """`digits` random hex digits (even) from the pool `new_prediction_id` draws from."""
    global _id_pool, _id_at
    at = _id_at
    if at + digits > len(_id_pool):
        _id_pool, at = os.urandom(10 * _ID_POOL).hex(), 0
    _id_at = at + digits
    return _id_pool[at : at + digits]


BATCH_TAG_LENGTH = 28
"""A runtime batch's tag: 12 hex digits of the time in milliseconds, then 64 random bits."""


def batch_request_id(tensors: BatchTensors, start: int) -> str:
    """The response id of a request of a runtime batch that sent none: the batch's tag (made at the batch's first
    id), '-', and the request's first row in hex.

    The id names where its prediction is stored: the log keeps the batch as one row that carries the tag
    (`gateway.storage.prediction_batches`), so the store finds the request by its batch and needs no key row of
    its own, the one B-tree insert a logged request cost (a third of the log writer's CPU). Unique as the tag is:
    two requests of a batch never share a first row. Time first, like `new_prediction_id`, so tags arrive in index
    order."""
    tag = tensors.tag
    if tag is None:
        tag = tensors.tag = "%012x%s" % (time.time_ns() // 1_000_000, _random_hex(16))  # noqa: UP031
    return f"{tag}-{start:x}"


def batch_tag_of(prediction_id: str) -> str | None:
    """The tag an id in `batch_request_id`'s form names, None for an id of no such form. Only its shape is checked
    (a tag's length, then '-'): a text that is not a tag finds no batch. An id of that form may also be a
    caller's (one that sends back an id it was given): the store looks for it both ways."""
    if len(prediction_id) <= BATCH_TAG_LENGTH + 1 or prediction_id[BATCH_TAG_LENGTH] != "-":
        return None
    return prediction_id[:BATCH_TAG_LENGTH]


def is_batch_request_id(prediction_id: str, tag: str | None, start: int) -> bool:
    """Whether a slot's id is the one `batch_request_id` made for it: then its stored batch's tag finds it."""
    return tag is not None and prediction_id == f"{tag}-{start:x}"


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
    dropped_beyond_spool: int = 0
    """Of `dropped`, those refused while the spool was in use (full, or its disk failing)."""
    dropped_beyond_spool_bytes: int = 0

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
        writer: RowWriter | None = None,
        capacity: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        retention: Retention | None = None,
        spool: RowSpool | None = None,
        probe_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        """`capacity` records and `max_bytes` of encoded tensors bound what is held in memory (a count alone
        would not bound memory when bodies are large). `writer`: where batches go (the gateway's writer
        process); without one, they are written to `sink` in a worker thread. `spool`: where what does not
        fit in memory goes (the caller opens and closes it; it may hold records of an earlier run, written
        first)."""
        if capacity < 1 or batch_size < 1 or flush_interval_s <= 0:
            raise ValueError("capacity and batch_size must be at least 1, flush_interval_s above 0")
        self.sink = sink
        self.writer = writer
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retention = retention
        self.spool = spool
        self.probe_interval_s = probe_interval_s
        self.counters = LogCounters()
        self._queue: deque[LogItem] = deque()
        self._queued = 0
        """Records in the queue (a batch entry holds several)."""
        self._queued_bytes = 0
        self._held: list[LogItem] = []
        """A batch the sink was unavailable for, tried again before anything queued after it."""
        self._held_count = 0
        self._held_bytes = 0
        self._sending = 0
        """Records of the batch with the sink now (taken from memory; a spooled batch stays in the spool)."""
        self._sending_bytes = 0
        self._spill_paused_until = -math.inf
        self._unavailable_since: float | None = None
        self._lock = asyncio.Lock()
        """Held while a batch is with the sink: one write at a time, and `flush` waits for the one in flight."""
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._last_failure_log = -math.inf
        self._last_spool_log = -math.inf
        self._failures_unlogged = 0

    # -- hot path ---------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Records held in memory to be written: queued, held, and the batch with the sink (at most `capacity`)."""
        return self._queued + self._held_count + self._sending

    @property
    def spool_pending(self) -> bool:
        """Whether the spool holds records to write back (before anything in memory)."""
        return self.spool is not None and self.spool.pending

    @property
    def sink_unavailable(self) -> bool:
        """True while the last write found the sink unavailable (records are held, then dropped)."""
        return self._unavailable_since is not None

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
        """Sample, encode and queue one record, stamped now; True when it was queued. Never blocks, never
        raises; its cost grows with the tensors' count, not their size (one `tobytes` each)."""
        if sample_rate < 1.0 and not sampled(prediction_id, sample_rate):
            self.counters.sampled_out += 1
            return False
        return self._enqueue(prediction_id, time.time(), model, version, route, inputs, outputs, latency_s, outcome)

    def offer(self, record: PredictionRecord) -> bool:
        """Queue a record as it is (its own time); False (and counted) when the queue is full or closed."""
        try:
            at = record.at.timestamp()
        except Exception:
            self.counters.failed += 1
            return False
        r = record
        return self._enqueue(r.id, at, r.model, r.version, r.route, r.inputs, r.outputs, r.latency_s, r.outcome)

    def _enqueue(
        self,
        prediction_id: str,
        at: float,
        model: str,
        version: str,
        route: str,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        latency_s: float,
        outcome: str,
    ) -> bool:
        try:
            if self._refused(prediction_id):
                return False
            if self._full():
                self._drop(inputs, outputs)
                return False
            encoded_in = tensors_to_bytes(inputs)
            encoded_out = tensors_to_bytes(outputs)
            size = len(encoded_in) + len(encoded_out)
            held_bytes = self._queued_bytes + self._held_bytes + self._sending_bytes
            if held_bytes + size > self.max_bytes and not self._spill():
                self._drop(inputs, outputs)
                return False
            self._queue.append(
                (model, prediction_id, version, route, at, float(latency_s), outcome, encoded_in, encoded_out)
            )
            self._queued_bytes += size
            self._one_more()
            return True
        except Exception:  # an observer never breaks a request
            log.exception("prediction log: cannot queue a record")
            self.counters.failed += 1
            return False

    def record_batched(
        self,
        tensors: BatchTensors,
        start: int,
        stop: int,
        prediction_id: str,
        model: str,
        version: str,
        route: str,
        wanted: tuple[str, ...] | None,
        latency_s: float,
        sample_rate: float = 1.0,
    ) -> bool:
        """`record` for an answered request whose rows `start:stop` of a runtime batch's `tensors` are its inputs
        and outputs (`wanted`: the outputs it asked for, None for all): stored exactly as `record` would store
        it, but queued as one small tuple on the batch's entry, its tensors encoded by the writer. Never
        blocks, never raises.

        Called once for every answered request of a runtime batch, on the event loop: the common case (the
        batch's entry already open, room in memory, nothing sampled out) is one test and an append, with no
        method call; everything else (a request that opens its batch's entry, is sampled, or finds the log full or
        closed) goes the long way below."""
        entry = tensors.entry
        if (
            entry is not None
            and entry.owner is self
            and sample_rate >= 1.0
            and len(prediction_id) <= MAX_ID_LENGTH
            and self._queued + self._held_count + self._sending < self.capacity
            and not self._closed
        ):
            entry.slots.append((prediction_id, route, float(latency_s), start, stop, wanted))
            queued = self._queued = self._queued + 1
            if queued >= self.batch_size:
                self._wake.set()
            return True
        if sample_rate < 1.0 and not sampled(prediction_id, sample_rate):
            self.counters.sampled_out += 1
            return False
        try:
            if self._refused(prediction_id):
                return False
            if self._full():
                self._drop_batched(tensors, start, stop, wanted)
                return False
            entry = tensors.entry
            if entry is None or entry.owner is not self:
                size = tensors.nbytes
                if (
                    self._queued_bytes + self._held_bytes + self._sending_bytes + size > self.max_bytes
                    and not self._spill()
                ):
                    self._drop_batched(tensors, start, stop, wanted)
                    return False
                entry = tensors.entry = BatchEntry(self, model, version, tensors, size, time.time())
                self._queue.append(entry)
                self._queued_bytes += size
            entry.slots.append((prediction_id, route, float(latency_s), start, stop, wanted))
            self._one_more()
            return True
        except Exception:  # an observer never breaks a request
            log.exception("prediction log: cannot queue a record")
            self.counters.failed += 1
            return False

    def record_batch(
        self,
        tensors: BatchTensors,
        model: str,
        version: str,
        route: str,
        slots: Sequence[tuple[str, int, int, float]],
        sample_rate: float = 1.0,
    ) -> int:
        """`record_batched` for several requests of one runtime batch at once, each with every output (a shadow's
        copies, which answer together): `slots` are (prediction id, start, stop, latency). One entry lookup and
        one capacity check for them all; where the log is closed or near full, each goes `record_batched`'s way.
        Returns how many were queued. Never blocks, never raises."""
        if sample_rate < 1.0:
            kept = [slot for slot in slots if sampled(slot[0], sample_rate)]
            self.counters.sampled_out += len(slots) - len(kept)
            slots = kept
        fit = [slot for slot in slots if len(slot[0]) <= MAX_ID_LENGTH]
        self.counters.failed += len(slots) - len(fit)  # too long to store, as `_refused` counts them
        if not fit:
            return 0
        try:
            entry = tensors.entry
            opened = entry is not None and entry.owner is self
            size = 0 if opened else tensors.nbytes
            if (
                self._closed
                or self._queued + self._held_count + self._sending + len(fit) > self.capacity
                or self._queued_bytes + self._held_bytes + self._sending_bytes + size > self.max_bytes
            ):
                one = self.record_batched
                return sum(
                    one(tensors, start, stop, pid, model, version, route, None, s) for pid, start, stop, s in fit
                )
            if entry is None or not opened:
                entry = tensors.entry = BatchEntry(self, model, version, tensors, size, time.time())
                self._queue.append(entry)
                self._queued_bytes += size
            entry.slots.extend((pid, route, float(s), start, stop, None) for pid, start, stop, s in fit)
            self._queued += len(fit)
            if self._queued >= self.batch_size:
                self._wake.set()
            return len(fit)
        except Exception:  # an observer never breaks a request
            log.exception("prediction log: cannot queue a batch's records")
            self.counters.failed += len(fit)
            return 0

    def _refused(self, prediction_id: str) -> bool:
        """An id too long to store (counted as failed), or the log closed (counted as dropped)."""
        if len(prediction_id) > MAX_ID_LENGTH:
            self.counters.failed += 1
            return True
        if self._closed:
            self.counters.dropped += 1
            return True
        return False

    def _full(self) -> bool:
        """Memory holds `capacity` records and the spool would not take the oldest batch."""
        return self._queued + self._held_count + self._sending >= self.capacity and not self._spill()

    def _one_more(self) -> None:
        self._queued += 1
        if self._queued >= self.batch_size:
            self._wake.set()

    def _drop_batched(self, tensors: BatchTensors, start: int, stop: int, wanted: tuple[str, ...] | None) -> None:
        if tensors.whole:
            self._drop(dict(tensors.inputs), dict(tensors.outputs))
            return
        outputs = {name: array[start:stop] for name, array in tensors.outputs.items()}
        if wanted is not None:
            outputs = {name: outputs[name] for name in wanted if name in outputs}
        self._drop({name: array[start:stop] for name, array in tensors.inputs.items()}, outputs)

    def _drop(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        self.counters.dropped += 1
        if self.spool is not None:  # what the spool could not take: its size too (an outage's cost, rare)
            self.counters.dropped_beyond_spool += 1
            self.counters.dropped_beyond_spool_bytes += len(tensors_to_bytes(inputs)) + len(tensors_to_bytes(outputs))

    def _spill(self) -> bool:
        """Memory is full: move the oldest queued batch to the spool (it is written back before anything
        in memory); False when there is no spool, nothing queued, or the spool refused it."""
        queue, spool = self._queue, self.spool
        if spool is None or time.monotonic() < self._spill_paused_until:
            return False
        if not queue:  # a capacity of about a batch: the held batch is what there is (it goes first: in order)
            if not self._held or spool.pending:
                return False
            if not self._to_spool(self._held):
                self._spill_paused_until = time.monotonic() + SPILL_PAUSE_S
                return False
            self._take_held()
            return True
        batch = self._pop(self.batch_size)
        if not self._to_spool(batch):
            queue.extendleft(reversed(batch))  # sealed entries: a request logged now opens a new one
            self._queued += sum(_records_in(item) for item in batch)
            self._queued_bytes += sum(_bytes_in(item) for item in batch)
            self._spill_paused_until = time.monotonic() + SPILL_PAUSE_S
            return False
        return True

    def _to_spool(self, batch: Sequence[LogItem]) -> bool:
        """Append a batch to the spool (`spooled_form`); False (logged at most every so often) when it cannot be
        kept."""
        assert self.spool is not None
        try:
            if self.spool.append(spooled_form(batch)):
                return True
            reason: object = "the spool is full"
        except OSError as exc:
            reason = exc
        now = time.monotonic()
        if now - self._last_spool_log >= _FAILURE_LOG_EVERY_S:
            self._last_spool_log = now
            log.error("prediction log: memory is full and the spool refuses records; dropping: %s", reason)
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

        With a spool, what is left in memory then goes to it (for the next start to write), and at once
        when the sink is unavailable or the spool holds older records: a shutdown during an outage loses
        nothing and does not wait for the time limit. What can be neither written nor spooled is counted
        as dropped and logged.
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
            elif not self._spill_at_close():
                await asyncio.wait_for(self._drain(), timeout_s)
        except TimeoutError:
            log.error("prediction log: %d records not written within %.1f s of shutdown", self.depth, timeout_s)
            if self._writer is not None:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
        self._closed = True
        rest = expand_items(self._take_held() + list(self._queue))
        self._queue.clear()
        self._queued = self._queued_bytes = 0
        if rest and self.spool is not None:
            spooled = 0
            for start in range(0, len(rest), self.batch_size):
                batch = rest[start : start + self.batch_size]
                if not self._to_spool(batch):
                    break
                spooled += len(batch)
            if spooled:
                log.warning("prediction log: %d records kept in the spool, to be written at the next start", spooled)
            rest = rest[spooled:]
        if rest:
            log.error("prediction log: %d records dropped at shutdown", len(rest))
            self.counters.dropped += len(rest)
        log.info("prediction log closed", extra=self.counters.as_dict())

    async def prune(self, *, older_than: datetime | None, keep_rows: int | None) -> int:
        """Delete records older than `older_than` and beyond the newest `keep_rows`; the number deleted."""
        return await asyncio.to_thread(self.sink.prune_predictions, older_than=older_than, keep_rows=keep_rows)

    # -- the writer -----------------------------------------------------------------------------

    async def _run(self) -> None:
        """One batch per turn: the held batch, then the spool's oldest, then a full batch from memory as
        soon as there is one, a partial one only after `flush_interval_s` without a full one (or on close).
        While the sink is unavailable: a probe every `probe_interval_s`, and a write once it answers.

        Not "everything queued whenever the last write is done": under load that writes as many
        records as arrived during the last write, a few dozen, and a batch's fixed costs (the
        commit's pages, the pipe round trip, the pickling's setup) then cost 2-3 times as much per
        record as in batches of 500 (`loadtests.log_cost --batch`).
        """
        while True:
            if self._spill_at_close():
                return  # close() spools what memory holds
            if self._unavailable_since is not None:
                # Closing does not cut the pause short: a shutdown without a spool, the sink down, would spin.
                await asyncio.sleep(self.probe_interval_s)
                if self._spill_at_close() or not await self._probe():
                    continue
            elif not self._closing and not self._held and not self.spool_pending and self._queued < self.batch_size:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            try:
                async with self._lock:
                    await self._write_next()
            except Exception:  # a bug here must not stop the log: the queue would only fill and drop
                log.exception("prediction log: writer error")
            if self._closing and not self._queue and not self._held and not self.spool_pending:
                return

    def _spill_at_close(self) -> bool:
        """Closing with a spool, while the sink is away or the spool holds older records: memory goes to the
        spool rather than to the sink (in order, and without waiting for the time limit)."""
        return self._closing and self.spool is not None and (self._unavailable_since is not None or self.spool.pending)

    async def _probe(self) -> bool:
        """Whether the sink answers now (a cheap round trip); an error that is not unavailability lets the
        next write find out."""
        try:
            if self.writer is not None:
                await self.writer.probe()
            else:
                await asyncio.to_thread(self.sink.ping)
        except SinkUnavailable:
            return False
        except Exception as exc:
            log.warning("prediction log: probing the sink failed: %s", exc)
        return True

    async def _drain(self) -> None:
        """Write the held batch, the spool and the queue now; stops early (keeping the rest) if the sink is
        unavailable."""
        async with self._lock:
            while self._held or self.spool_pending or self._queue:
                await self._write_next()
                if self._unavailable_since is not None:
                    return

    async def _write_next(self) -> None:
        """Write the oldest batch: the held one, else the spool's first, else from memory."""
        if self._held:
            await self._write(self._take_held())
            return
        spool = self.spool
        if spool is not None and spool.pending:
            items = spool.peek()
            if items is not None:
                await self._write(list(items), spool=spool)
                return
        if self._queue:
            await self._write(self._take())

    def _take_held(self) -> list[LogItem]:
        batch, self._held, self._held_count, self._held_bytes = self._held, [], 0, 0
        return batch

    def _take(self) -> list[LogItem]:
        return self._pop(self.batch_size)

    def _pop(self, records: int) -> list[LogItem]:
        """The oldest items of the queue holding at least `records` records (or all of it), taken away: each
        batch entry among them is sealed, so a request of that batch logged later opens an entry of its own."""
        queue = self._queue
        if self._queued <= records:  # the common case: the whole queue, without counting on the event loop
            batch = list(queue)
            queue.clear()  # the same deque: a caller may hold it (`_enqueue` spills, then appends)
            self._queued = self._queued_bytes = 0
        else:
            batch = []
            taken = size = 0
            while queue and taken < records:
                item = queue.popleft()
                batch.append(item)
                taken += _records_in(item)
                size += _bytes_in(item)
            self._queued -= taken
            self._queued_bytes -= size
        for item in batch:
            if isinstance(item, BatchEntry) and item.tensors.entry is item:  # sealed
                item.tensors.entry = None
        return batch

    async def _write(self, batch: Sequence[LogItem | BatchFrame], *, spool: RowSpool | None = None) -> None:
        """Hand one batch to the sink. One from memory counts against the capacity until it is written (or
        held again); one from the `spool` stays there until the sink took it."""
        spooled = spool is not None
        count = sum(_records_in(item) for item in batch)
        # From memory, the batch is the log's own items (the spool's hold runtime batches as frames instead).
        mine = None if spooled else cast("list[LogItem]", batch)
        if mine is not None:
            self._sending = count
            self._sending_bytes = sum(_bytes_in(item) for item in mine)
        try:
            if self.writer is not None:  # the writer process: no second thread to share the GIL with
                await self.writer.write(batch)
            else:
                await asyncio.to_thread(_write_items, self.sink, batch)
        except asyncio.CancelledError:
            if mine is not None:  # it may have been written: written again, the store ignores the repeat
                self._hold(mine, None)
            raise
        except SinkUnavailable as exc:
            if mine is not None:
                self._hold(mine, exc)
            else:
                self._unavailable(exc)
            return
        except Exception as exc:
            self.counters.failed += count
            self._log_failure(count, exc)
            if spool is not None:
                spool.commit()  # never tried again: it would fail again
            return
        finally:
            self._sending = self._sending_bytes = 0
        self.counters.written += count
        if spool is not None:
            spool.commit()
        if self._unavailable_since is not None:
            log.warning(
                "prediction log: the sink is back after %.1f s; writing the %d records held%s",
                time.monotonic() - self._unavailable_since,
                self.depth,
                " and the spool" if self.spool_pending else "",
            )
            self._unavailable_since = None

    def _hold(self, batch: list[LogItem], exc: Exception | None) -> None:
        """Keep a batch the sink could not take now, to be tried first once the sink answers a probe."""
        self._held = batch
        self._held_count = sum(_records_in(item) for item in batch)
        self._held_bytes = sum(_bytes_in(item) for item in batch)
        if exc is not None:
            self._unavailable(exc)

    def _unavailable(self, exc: Exception) -> None:
        if self._unavailable_since is None:
            self._unavailable_since = time.monotonic()
            beyond = "spilled to the spool, then dropped and counted" if self.spool else "dropped and counted"
            log.error(
                "prediction log: the sink is unavailable; holding %d records in memory (new ones are %s beyond "
                "%d) and probing it every %.2f s: %s",
                self.depth,
                beyond,
                self.capacity,
                self.probe_interval_s,
                exc,
            )

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
