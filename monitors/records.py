"""What the monitors read and write: prediction records, labels, and the sink that stores them.

`monitors` never imports `gateway`: the gateway's store implements `PredictionSink`, and the
gateway hands it to the monitors. `PredictionRecord`s keep numpy arrays as they came; the log
queues `PredictionRow`s, the arrays already in their stored form (bytes), and, for the requests of a
runtime batch, the batch's own arrays once (`monitors.log_batches`), counted in the log's byte bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from monitors.log_batches import BatchEntry, BatchFrame


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    id: str
    """The V2 response `id` (generated when the caller sent none): what a label refers to."""
    at: datetime
    model: str
    version: str
    route: str
    """stable, canary, pinned or shadow."""
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    latency_s: float
    outcome: str
    """ok, or the failure outcome (error, timeout, ...); failed requests have no outputs."""


@dataclass(frozen=True, slots=True)
class Label:
    prediction_id: str
    value: Any
    """Ground truth as JSON: a class, a number, or a list for several rows."""
    at: datetime | None = None
    """When the truth became known; None: when it was received."""


@dataclass(frozen=True)
class LabelResult:
    stored: int
    """New labels and changed ones."""
    unchanged: int = 0
    """Labels that were already there with the same value (a repeat is idempotent)."""
    unknown: tuple[str, ...] = field(default=())
    """Prediction ids the log does not know; nothing was stored for them."""


@dataclass(frozen=True)
class LabeledPrediction:
    id: str
    at: datetime
    version: str
    outputs: dict[str, Any]
    label: Any
    labeled_at: datetime


class SinkUnavailable(Exception):
    """The sink cannot store anything now (its database is cut off, or its disk is full), but may again:
    the batch was not written and can be tried again later. Any other error from a sink loses the batch."""


PredictionRow = tuple[str, str, str, str, float, float, str, bytes, bytes]
"""A record as the store takes it: (model, id, version, route, at as epoch seconds, latency_s, outcome,
inputs, outputs as `monitors.prediction_log.tensors_to_bytes`): a prediction's columns, in order.
Plain values only, so a batch pickles in C, about 0.2 µs a row: the form a batch crosses to the log's
writer process in."""


LogItem = PredictionRow | BatchEntry
"""What the log queues: a record logged alone, or the requests of one runtime batch (`monitors.log_batches`)."""


class RowWriter(Protocol):
    """Writes batches from the event loop (the gateway's writer process); the sink keeps the rest. A batch
    holds rows and runtime batches (entries as the log queued them, or frames already packed), which the
    writer packs and hands to the store (`PredictionSink.write_log_items`). Raises `SinkUnavailable` when the
    batch may be tried again."""

    async def write(self, items: Sequence[PredictionRow | BatchEntry | BatchFrame]) -> None: ...

    async def probe(self) -> None:
        """Return when the database answers (a cheap round trip); `SinkUnavailable` while it does not."""


class RowSpool(Protocol):
    """Local disk for the records the log cannot hold in memory (the gateway's `gateway.storage.spool.Spool`):
    rows and runtime batches (`monitors.log_batches.spoolable` ones), appended in order, read back oldest first,
    each frame let go once the sink took it."""

    @property
    def pending(self) -> bool:
        """Whether records wait to be read back."""

    def append(self, items: Sequence[PredictionRow | BatchFrame]) -> bool:
        """Keep the items after the others; False (nothing kept) when the spool is full; OSError when the disk
        refuses (nothing kept either)."""

    def peek(self) -> Sequence[PredictionRow | BatchFrame] | None:
        """The oldest items not yet taken (the same until `commit`); None when nothing waits."""

    def commit(self) -> None:
        """The items `peek` returned were taken by the sink: let them go."""


class PredictionSink(Protocol):
    """Synchronous storage, called from a worker thread (never on the event loop). A write that may succeed
    later (the database is unreachable or full) raises `SinkUnavailable`."""

    def write_log_items(self, items: Sequence[PredictionRow | BatchFrame]) -> int | None:
        """Store a batch of the log in one transaction: rows as they are, and each runtime batch's requests
        (`monitors.log_batches.BatchFrame`) as the store lays them out; the requests stored, where known."""

    def ping(self) -> None:
        """Return when the database answers (a cheap round trip); `SinkUnavailable` while it does not."""

    def prune_predictions(self, *, older_than: datetime | None, keep_rows: int | None) -> int: ...

    def write_labels(self, model: str, labels: Sequence[Label]) -> LabelResult: ...

    def labeled_predictions(
        self, model: str, version: str, *, since: datetime | None = None, limit: int = 10_000
    ) -> list[LabeledPrediction]: ...
