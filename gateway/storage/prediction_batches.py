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

The key a request was a third of that (1.1 of the 2.3 µs SQLite spent a request, side by side with no keys), and
most requests do not need one: a caller that sends no id gets one the gateway makes, and a request of a runtime
batch gets its batch's tag and its first row (`monitors.prediction_log.batch_request_id`). The batch row carries
the tag (and `part`, its first slot's row: the unique (model, tag, version, part) makes a batch sent again a
repeat that is not stored), so such an id is found by its batch, and no key row is written for it. Every other id (a
caller's, a request logged alone, a batch of tensors without a fixed width, stored a request a row) keeps its
key row. Readers look an id up both ways (`tag_lookup`); a caller that sends back an id the gateway made, for the
same version, has it found the tag's way first, so the first prediction is still the one kept.

A request's time is its batch's (`BatchFrame.at`): the requests of a runtime batch are answered, and logged,
within microseconds of one another. So a window or a count by time is exact at the batch's grain, and rows
are ordered by (at, id) with nothing to merge. A record logged alone (a failure, `offer`) is a batch of one.

Readers expand a batch's slots into the rows they would have been logged as alone (`batch_rows`), byte for
byte: the same `monitors.prediction_log.slot_rows` cuts them out as it did in the writer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson

from monitors.log_batches import BatchFrame
from monitors.prediction_log import (
    BATCH_TAG_LENGTH,
    ROUTE_SHADOW,
    batch_tag_of,
    expand_items,
    is_batch_request_id,
    slot_rows,
)
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
    keyed: list[str]
    """The ids that need a key row: all but those its tag finds (`monitors.prediction_log.batch_request_id`)."""
    tag: str | None = None
    part: int | None = None
    copies: bool = False
    """Every request a shadow's copy: their ids are their primary requests', which name the primary version's
    batches, never this version's, so no tag of this version can hold them (`Store` asks only for the others)."""


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
                tag = item.tag
                keyed = [slot[0] for slot in item.slots] if tag is None else _keyed(tag, item.slots)
                part = None if tag is None else item.slots[0][3]
                copies = tag is None and {slot[1] for slot in item.slots} == _COPIES
                slots = orjson.dumps(item.slots)
                batches.append(
                    StoredBatch(
                        item.model,
                        item.version,
                        item.at,
                        count,
                        count,
                        item.whole,
                        slots,
                        item.inputs,
                        item.outputs,
                        keyed,
                        tag,
                        part,
                        copies,
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
            ok = int(outcome == "ok")
            encoded = orjson.dumps([slot])
            copies = route == ROUTE_SHADOW
            batches.append(StoredBatch(model, version, at, 1, ok, True, encoded, inputs, outputs, [id_], copies=copies))
    return batches


_COPIES = {ROUTE_SHADOW}


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


def batch_tags(ids: Iterable[str]) -> set[str]:
    """The tags that the ids among `ids` in the form the gateway makes for a batch's requests name (a set
    comprehension: the writer asks this of every key row's id)."""
    n = BATCH_TAG_LENGTH
    return {id_[:n] for id_ in ids if len(id_) > n + 1 and id_[n] == "-"}


def tag_lookup(ids: Iterable[str]) -> dict[str, set[str]]:
    """The ids among `ids` in the form the gateway makes for a batch's requests, by their batch's tag."""
    tags: dict[str, set[str]] = {}
    for id_ in ids:
        tag = batch_tag_of(id_)
        if tag is not None:
            tags.setdefault(tag, set()).add(id_)
    return tags


def tagged_ids(tag: str, slots: bytes | str) -> list[str]:
    """The ids of a tagged batch's requests that its tag finds (made from it), in slot order."""
    return [slot[0] for slot in orjson.loads(slots) if is_batch_request_id(slot[0], tag, slot[3])]


_ROW_HEX = [f"{row:x}" for row in range(4096)]
"""Rows in hex as `batch_request_id` writes them, made once (a format a request cost the writer 0.3 µs)."""


def _keyed(tag: str, slots: Sequence[Sequence[Any]]) -> list[str]:
    """The ids of a tagged batch's requests that its tag does not find (a caller's own), in slot order."""
    prefix = tag + "-"
    try:
        hexes = _ROW_HEX
        return [slot[0] for slot in slots if slot[0] != prefix + hexes[slot[3]]]
    except IndexError:  # a batch of more rows than the table holds
        return [slot[0] for slot in slots if not is_batch_request_id(slot[0], tag, slot[3])]
