"""Shadow traffic: a copy of a request to other versions, compared with the primary's answer.

The copy is sent after the primary answered: it never changes the response and never holds it up.
Copies are sent by the batch, not by the request: the requests of one primary batch answer in one turn
of the event loop, so `dispatch` only queues each copy, and one callback scheduled for the end of that
turn concatenates what was queued for each shadow into one request to the shadow's batcher (one runtime
call for what the primary ran in one), then compares every request's rows at once
(`compare_batch`) and counts the verdicts with one metrics update per batch. Copies that cannot be
concatenated (other shapes, a model without a batch dimension) go in batches of their own, and a batch
the shadow fails is sent again in halves, so one bad copy is the only one counted as failed.

Shadows use spare capacity only: copies are dropped (and counted) when the shadow already has a full
batch's rows waiting, or too many shadow batches are in flight. Under saturation the shadow is sampled
down instead of taking CPU from real callers. Observers never break requests: every error is caught
and counted. Each shadow answer (or failure) goes to the prediction log with route "shadow" and the
request's prediction id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.observability.metrics import (
    LATENCY_BUCKETS,
    SHADOW_ABS_DIFF_BUCKETS,
    FastCounter,
    FastHistogram,
    GatewayMetrics,
)
from gateway.serving.registry import ServedVersion
from gateway.serving.request import InferRequest
from gateway.serving.validation import validate
from gateway.serving.window_stats import WindowRecorder
from monitors.log_batches import BatchTensors
from monitors.prediction_log import ROUTE_SHADOW, PredictionLog
from monitors.shadow_compare import Comparison, OutputRule, compare_batch, compare_outputs

log = logging.getLogger(__name__)

RulesFor = Callable[[ServedVersion], Mapping[str, OutputRule]]
Arrays = Mapping[str, np.ndarray]


_Figures = tuple[FastHistogram, FastHistogram, FastCounter, FastCounter]
"""A shadow's latency and difference histograms, its agreed and disagreed counts."""


@dataclass(slots=True)
class _Copy:
    request: InferRequest
    primary: Arrays
    prediction_id: str
    revision: int
    queued: float


def _layout(copy: _Copy) -> tuple[object, ...]:
    """What copies must share to be concatenated: every input's and output's name, dtype and trailing shape."""
    return tuple(
        (name, a.dtype, a.shape[1:]) for arrays in (copy.request.inputs, copy.primary) for name, a in arrays.items()
    )


def _rows(arrays: Arrays) -> int:
    first = next(iter(arrays.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 0


class ShadowDispatcher:
    def __init__(
        self,
        metrics: GatewayMetrics,
        windows: WindowRecorder,
        rules_for: RulesFor | None = None,
        max_in_flight: int = 64,
        predictions: PredictionLog | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._metrics = metrics
        self._predictions = predictions
        self._windows = windows
        self._rules_for = rules_for or (lambda _: {})
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._agreement: dict[tuple[str, str], list[int]] = {}
        self._figures: dict[tuple[str, str], _Figures] = {}
        metrics.add_sampler(self._sample_agreement)
        self._pending: dict[tuple[str, str], tuple[ServedVersion, list[_Copy]]] = {}
        self._flush_scheduled = False

    def dispatch(
        self,
        request: InferRequest,
        primary: Arrays,
        shadows: tuple[ServedVersion, ...],
        prediction_id: str = "",
        revision: int = 0,
    ) -> None:
        """Queue a copy of the request for each shadow, sent with the rest of this turn's copies; `prediction_id`
        (the primary's response id) names the shadow's record in the prediction log ("": not logged); `revision`
        is the routing policy's."""
        copy = _Copy(request, primary, prediction_id, revision, self._clock())
        for shadow in shadows:
            key = (shadow.model, shadow.version)
            entry = self._pending.get(key)
            if entry is None:
                self._pending[key] = entry = (shadow, [])
            entry[1].append(copy)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """End of the loop's turn: send each shadow what was queued for it, a batch at a time."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for shadow, copies in pending.values():
            for batch in self._batches(shadow, copies):
                batcher = shadow.batcher
                busy = batcher is None or batcher.queued_rows >= max(1, batcher.config.max_batch_size)
                if busy or len(self._tasks) >= self._max_in_flight:
                    self._metrics.shadow_dropped.labels(shadow.model, shadow.version).inc(len(batch))
                    continue
                task = asyncio.get_running_loop().create_task(self._shadow(shadow, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _batches(shadow: ServedVersion, copies: list[_Copy]) -> list[list[_Copy]]:
        """The copies in batches of one layout and at most the shadow's max_batch_size rows (one copy each when
        the shadow does not batch)."""
        limit = shadow.batching.max_batch_size
        runtime = shadow.runtime
        if len(copies) == 1 or limit <= 0 or runtime is None or not runtime.signature.batchable:
            return [[c] for c in copies]
        batches: list[list[_Copy]] = []
        open_: dict[tuple[object, ...], tuple[list[_Copy], int]] = {}
        for copy in copies:
            layout, rows = _layout(copy), _rows(copy.request.inputs)
            batch, filled = open_.get(layout, ([], 0))
            if batch and filled + rows > limit:
                batches.append(batch)
                batch, filled = [], 0
            batch.append(copy)
            open_[layout] = (batch, filled + rows)
        batches.extend(batch for batch, _ in open_.values())
        return batches

    async def _shadow(self, shadow: ServedVersion, batch: list[_Copy]) -> None:
        """Send the batch; when it fails, send its halves, until each failing copy stands alone (as the batcher
        isolates a failing request), so one bad copy is the only one counted as failed."""
        try:
            await self._run(shadow, batch)
        except Exception as exc:
            if len(batch) == 1:
                self._failed(shadow, batch[0], exc)
                return
            mid = len(batch) // 2
            await self._shadow(shadow, batch[:mid])
            await self._shadow(shadow, batch[mid:])

    async def _run(self, shadow: ServedVersion, batch: list[_Copy]) -> None:
        runtime, batcher = shadow.runtime, shadow.batcher
        if runtime is None or batcher is None:
            raise RuntimeError(shadow.not_ready_reason())
        if len(batch) == 1:
            request = batch[0].request
            primary = batch[0].primary
        else:
            first = batch[0].request
            inputs = {n: np.concatenate([c.request.inputs[n] for c in batch]) for n in first.inputs}
            request = InferRequest(model=first.model, version=first.version, inputs=inputs)
            primary = {n: np.concatenate([c.primary[n] for c in batch]) for n in batch[0].primary}
        rows = validate(request, runtime.signature, shadow.batching.max_batch_size)
        outputs, _ = await batcher.submit(request.inputs, rows, None, batch[0].request.timeout_s)
        rules = self._rules_for(shadow)
        tensors = BatchTensors(request.inputs, outputs, rows, len(batch) == 1)
        if len(batch) == 1:  # as it is (a model without a batch dimension included)
            self._compared(shadow, batch, tensors, [compare_outputs(primary, outputs, rules)], [rows])
        else:
            counts = [_rows(c.request.inputs) for c in batch]
            self._compared(shadow, batch, tensors, compare_batch(primary, outputs, counts, rules), counts)

    def _compared(
        self,
        shadow: ServedVersion,
        batch: list[_Copy],
        tensors: BatchTensors,
        verdicts: Sequence[Comparison],
        counts: Sequence[int],
    ) -> None:
        """Count and log the batch's copies; the log keeps the batch's tensors once (`tensors`: the copies'
        inputs and the shadow's outputs, each copy's rows in turn)."""
        labels = _key(shadow)
        now = self._clock()
        agreed = sum(v.agreed for v in verdicts)
        latency, abs_diff, agreed_count, disagreed_count = self._figures_of(labels)
        agreed_count.inc(agreed)
        disagreed_count.inc(len(verdicts) - agreed)
        totals = self._agreement[labels]
        totals[0] += agreed
        totals[1] += len(verdicts)
        by_revision: dict[int, list[int]] = {}
        offset = 0
        for copy, verdict, rows in zip(batch, verdicts, counts, strict=True):
            elapsed = now - copy.queued
            latency.observe(elapsed)
            if verdict.mean_abs_diff is not None:
                abs_diff.observe(verdict.mean_abs_diff)
            tally = by_revision.get(copy.revision)
            if tally is None:
                tally = by_revision[copy.revision] = [0, 0]
            tally[0] += 1
            tally[1] += verdict.agreed
            self._log_copy(copy, shadow, tensors, offset, rows, elapsed)
            offset += rows
        for revision, (compared, agreeing) in by_revision.items():
            self._windows.record_shadows(shadow.model, shadow.version, revision, compared, agreeing)

    def _log_copy(
        self, copy: _Copy, shadow: ServedVersion, tensors: BatchTensors, offset: int, rows: int, elapsed: float
    ) -> None:
        """Log an answered copy: its rows of the batch's tensors, kept once for the batch; a lone copy is encoded
        at once (cheaper than handing its arrays over)."""
        log = self._predictions
        if log is None or not copy.prediction_id:
            return
        rate = shadow.config.logging.rate
        if tensors.whole:
            outputs = dict(tensors.outputs)
            log.record(
                copy.prediction_id,
                shadow.model,
                shadow.version,
                ROUTE_SHADOW,
                copy.request.inputs,
                outputs,
                elapsed,
                "ok",
                rate,
            )
            return
        log.record_batched(
            tensors,
            offset,
            offset + rows,
            copy.prediction_id,
            shadow.model,
            shadow.version,
            ROUTE_SHADOW,
            None,
            elapsed,
            rate,
        )

    def _figures_of(self, labels: tuple[str, str]) -> _Figures:
        """The shadow's latency and difference histograms and its agreed and disagreed counts, lock-free (`Fast*`):
        observed once a copy or a batch, synced into Prometheus's before a scrape, as is the agreement gauge
        (`_sample_agreement`)."""
        figures = self._figures.get(labels)
        if figures is None:
            m = self._metrics
            figures = self._figures[labels] = (
                m.fast_histogram(m.shadow_latency.labels(*labels), LATENCY_BUCKETS),
                m.fast_histogram(m.shadow_abs_diff.labels(*labels), SHADOW_ABS_DIFF_BUCKETS),
                m.fast_counter(m.shadow_requests.labels(*labels, "agreed")),
                m.fast_counter(m.shadow_requests.labels(*labels, "disagreed")),
            )
            self._agreement[labels] = [0, 0]
        return figures

    def _sample_agreement(self) -> None:
        for labels, (agreed, compared) in list(self._agreement.items()):
            if compared:
                self._metrics.shadow_agreement.labels(*labels).set(agreed / compared)

    def _failed(self, shadow: ServedVersion, copy: _Copy, exc: Exception) -> None:
        self._metrics.shadow_requests.labels(*_key(shadow), "error").inc()
        self._windows.record_shadow(shadow.model, shadow.version, copy.revision, agreed=False)
        log.info("shadow %s/%s failed: %s", shadow.model, shadow.version, exc)
        if self._predictions is not None and copy.prediction_id:
            self._predictions.record(
                copy.prediction_id,
                shadow.model,
                shadow.version,
                ROUTE_SHADOW,
                copy.request.inputs,
                {},
                self._clock() - copy.queued,
                "error",
                shadow.config.logging.rate,
            )

    async def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for the shadow copies queued and in flight; used on shutdown and by tests."""
        if self._flush_scheduled:
            await asyncio.sleep(0)  # the copies queued this turn become batches
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        await self.wait_idle(timeout_s)


def _key(shadow: ServedVersion) -> tuple[str, str]:
    return shadow.model, shadow.version
