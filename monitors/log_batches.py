"""A runtime batch's tensors, logged once for all of its requests.

Logged one by one, each request cost the event loop its own encoding (two `tobytes`, a header, a
9-tuple), its own pickling, and, under load, about as much again in allocation and cache misses: the
log's 10% of req/s side by side, on a path whose in-process cost read only 2 µs. Yet the batcher already
holds each batch's inputs and outputs as arrays. So a successful batch is wrapped once (`BatchTensors`:
the arrays it has anyway, no copy), each of its requests is told its rows (`start`, `stop`), and the
log keeps, per logged request, one small tuple on the batch's `BatchEntry`. The arrays cross to the
writer once a batch (pickle protocol 5: their raw buffers), and the writer expands the rows
(`monitors.prediction_log.expand_items`): the same `PredictionRow`s, byte for byte, as the request
logged alone.

The arrays must not change after the batch: the batcher's are its own (a concatenation, the runtime's
outputs, or a single request's decoded inputs, which nothing writes to).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

Slot = tuple[str, str, float, int, int, tuple[str, ...] | None]
"""One logged request of a batch: (id, route, latency_s, start row, stop row, the outputs it asked for or
None for all). Its outcome is ok: a failed request has no outputs to share. Its time is the batch's: the
requests of a runtime batch are answered, and logged, together."""


class BatchTensors:
    """One successful batch's inputs and outputs, as the batcher ran them."""

    __slots__ = ("entry", "inputs", "outputs", "rows", "tag", "whole")

    def __init__(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], rows: int, whole: bool):
        """`whole`: the batch was one request's, whose rows are the arrays as they are (a runtime may answer
        a lone request with arrays that have no batch dimension to slice)."""
        self.inputs = inputs
        self.outputs = outputs
        self.rows = rows
        self.whole = whole
        self.entry: BatchEntry | None = None
        """The log's open entry for these tensors: set by the log when the first request is queued, cleared
        when the log takes the entry away (a request logged later opens a new one)."""
        self.tag: str | None = None
        """The batch's tag, made with its requests' first id (`monitors.prediction_log.batch_request_id`)."""

    @property
    def nbytes(self) -> int:
        size = 0
        for array in self.inputs.values():
            size += array.nbytes
        for array in self.outputs.values():
            size += array.nbytes
        return size


class BatchEntry:
    """What the log queues for a batch: its tensors and the slots of its requests logged so far."""

    __slots__ = ("at", "model", "nbytes", "owner", "slots", "tensors", "version")

    def __init__(self, owner: object, model: str, version: str, tensors: BatchTensors, nbytes: int, at: float) -> None:
        self.owner = owner
        """The log that queued it: another log (a test's second one) opens an entry of its own."""
        self.model = model
        self.version = version
        self.tensors = tensors
        self.nbytes = nbytes
        self.at = at
        """When its first request was logged (epoch seconds): every request of the batch is logged at this time."""
        self.slots: list[Slot] = []


Packed = bytes | dict[str, np.ndarray]
"""A batch's inputs or outputs as they cross to the writer: their stored form (`tensors_to_bytes` of the whole
batch: a header and the raw bytes per tensor, which pickle as one copy), or, for tensors without a fixed
width (whose stored form is JSON text), the arrays themselves. Arrays pickle through numpy's reduce, dtype
and all: 7 µs an array against 0.4 for its stored form (measured), per batch, on the event loop."""


class BatchFrame(NamedTuple):
    """A batch entry as the writer (process or thread) receives it."""

    model: str
    version: str
    at: float
    inputs: Packed
    outputs: Packed
    whole: bool
    slots: list[Slot]
    tag: str | None = None
    """The runtime batch's tag, where its requests' ids were made from it: stored with the batch, it finds them."""


def spoolable(frame: BatchFrame) -> bool:
    """Whether the spool (`gateway.storage.spool`) keeps a batch as one item, or as its requests' rows: it keeps
    tensors with a fixed width (their stored form, bytes; the others cross as arrays) and latencies that JSON can
    hold."""
    return (
        isinstance(frame.inputs, bytes)
        and isinstance(frame.outputs, bytes)
        and all(math.isfinite(slot[2]) for slot in frame.slots)
    )
