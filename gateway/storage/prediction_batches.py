"""The prediction log's stored form: one row per runtime batch, and one key per request.

The log's writer used to expand each batch into a row per request: the row, its primary key and its
(model, version, at) index, three B-tree inserts a request of about 300 bytes, and a Python tuple of nine
parameters to build. That was most of the writer process's CPU (8.3–9.3 µs a request at 12,000 req/s), which
the serving process felt on a 2-core box, and which `--workers 2` paid on cores it had no spare of. So a
runtime batch is stored as it arrives (`monitors.log_batches.BatchFrame`): its tensors once, as the serving
process packed them, and its requests as slots (id, route, latency_s, start row, stop row, the outputs asked
for, and the outcome where it is not ok), in one row of `prediction_batches`; each request adds a narrow key
row (model, id, version -> the batch) in `prediction_keys`, by which labels find their predictions and a
repeated id keeps its first prediction. The writer process then took 6.0–6.3 µs a request under the same load;
what is left is mostly the bytes (the WAL's pages at each commit) and the key a request.

A request's time is its batch's (`BatchFrame.at`): the requests of a runtime batch are answered, and logged,
within microseconds of one another. So a window or a count by time is exact at the batch's grain, and rows
are ordered by (at, id) with nothing to merge. A record logged alone (a failure, `offer`) is a batch of one.

Readers expand a batch's slots into the rows they would have been logged as alone (`batch_rows`), byte for
byte: the same `monitors.prediction_log.slot_rows` cuts them out as it did in the writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from monitors.log_batches import BatchFrame
from monitors.prediction_log import expand_items, slot_rows
from monitors.records import PredictionRow


class StoredBatch(NamedTuple):
    """A batch as the writer inserts it (`prediction_batches`' columns but its key, and its requests' ids)."""

    model: str
    version: str
    at: float
    rows: int
    ok: int
    whole: bool
    slots: bytes
    inputs: bytes
    outputs: bytes
    ids: list[str]


def stored_batches(items: Sequence[PredictionRow | BatchFrame]) -> list[StoredBatch]:
    """What the log hands the store, in its stored form: a runtime batch as one row, a row as a batch of one.

    A batch whose tensors have no fixed width (they crossed as arrays, `monitors.log_batches.Packed`) has no
    stored form to slice: its requests are stored one by one, as they would have been logged alone."""
    batches: list[StoredBatch] = []
    for item in items:
        if isinstance(item, BatchFrame):
            if not item.slots:
                continue
            if isinstance(item.inputs, bytes) and isinstance(item.outputs, bytes):
                count = len(item.slots)
                batches.append(
                    StoredBatch(
                        item.model,
                        item.version,
                        item.at,
                        count,
                        count,
                        item.whole,
                        orjson.dumps(item.slots),
                        item.inputs,
                        item.outputs,
                        [slot[0] for slot in item.slots],
                    )
                )
                continue
            rows = expand_items([item])
        else:
            rows = [item]
        for model, id_, version, route, at, latency_s, outcome, inputs, outputs in rows:
            slot: list[Any] = [id_, route, latency_s, 0, 0, None]
            if outcome != "ok":
                slot.append(outcome)
            batches.append(
                StoredBatch(
                    model, version, at, 1, int(outcome == "ok"), True, orjson.dumps([slot]), inputs, outputs, [id_]
                )
            )
    return batches


def batch_rows(
    model: str,
    version: str,
    at: Any,
    whole: bool,
    slots: bytes | str,
    inputs: Any,
    outputs: Any,
    only: set[str] | None = None,
) -> list[tuple[Any, ...]]:
    """A stored batch's requests as rows (`PredictionRow`'s order, `at` as given), each one's tensors in the
    stored form it would have had alone; `only`: just the requests with these ids."""
    decoded = orjson.loads(slots)
    if only is not None:
        decoded = [slot for slot in decoded if slot[0] in only]
    return slot_rows(model, version, at, _blob(inputs), _blob(outputs), whole, decoded)


def without_slots(slots: bytes | str, drop: set[int]) -> tuple[bytes, int, int]:
    """The slots but those at the positions in `drop`, with their count and how many are ok."""
    kept = [slot for i, slot in enumerate(orjson.loads(slots)) if i not in drop]
    return orjson.dumps(kept), len(kept), sum(1 for slot in kept if len(slot) < 7)


def slot_ids(slots: bytes | str) -> list[str]:
    """The ids of a stored batch's requests, in slot order."""
    return [slot[0] for slot in orjson.loads(slots)]


def _blob(value: Any) -> Any:
    """A tensors column as `slot_rows` takes it: bytes (psycopg hands back memoryview); text stays text (a row
    from before store migration 3 holds its tensors' JSON, which `tensors_from_bytes` reads)."""
    return bytes(value) if isinstance(value, memoryview | bytearray) else value
