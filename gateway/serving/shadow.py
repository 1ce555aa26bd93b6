"""Shadow traffic: a copy of a request to other versions, compared with the primary's answer.

The copy is sent after the primary answered: it never changes the response and never holds it up.
Copies are sent by the batch, not by the request: the requests of one primary batch answer in one turn
of the event loop, so `dispatch` only queues each copy, and one callback scheduled for the end of that
turn sends each shadow what was queued for it as one request to the shadow's batcher (one runtime call for
what the primary ran in one). When the copies are every request of one primary runtime batch, in its order
(the common case), the shadow is sent that batch's arrays as they are, and compared against its outputs as
they are: nothing is concatenated or sliced per request. Otherwise the copies are concatenated by layout.
Every request's rows are compared at once (`batch_verdicts`), counted with one metrics update per batch, and
logged with the batch's tensors once. Copies that cannot be concatenated (other shapes, a model without a
batch dimension) go in batches of their own, and a batch the shadow fails is sent again in halves, so one
bad copy is the only one counted as failed.

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
from monitors.shadow_compare import OutputRule, batch_verdicts, compare_outputs

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
    batch: BatchTensors | None
    """The primary's runtime batch, whose rows `start:stop` were this request's (None: it ran without one)."""
    start: int
    stop: int


@dataclass(slots=True)
class _Send:
    """Copies that go to a shadow as one request."""

    copies: list[_Copy]
    inputs: Arrays | None = None
    """With `primary`: arrays ready to send and compare (a whole primary batch's); None: the copies' own,
    concatenated when sent."""
    primary: Arrays | None = None


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
        batch: BatchTensors | None = None,
        start: int = 0,
        stop: int = 0,
    ) -> None:
        """Queue a copy of the request for each shadow, sent with the rest of this turn's copies; `prediction_id`
        (the primary's response id) names the shadow's record in the prediction log ("": not logged); `revision`
        is the routing policy's; `batch`, `start` and `stop`: the primary's runtime batch and the request's rows
        in it, when it ran in one."""
        copy = _Copy(request, primary, prediction_id, revision, self._clock(), batch, start, stop)
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
            whole = _whole_primary_batch(shadow, copies)
            for send in [whole] if whole is not None else self._batches(shadow, copies):
                batcher = shadow.batcher
                busy = batcher is None or batcher.queued_rows >= max(1, batcher.config.max_batch_size)
                if busy or len(self._tasks) >= self._max_in_flight:
                    self._metrics.shadow_dropped.labels(shadow.model, shadow.version).inc(len(send.copies))
                    continue
                task = asyncio.get_running_loop().create_task(self._shadow(shadow, send))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _batches(shadow: ServedVersion, copies: list[_Copy]) -> list[_Send]:
        """The copies in batches of one layout and at most the shadow's max_batch_size rows (one copy each when
        the shadow does not batch)."""
        limit = shadow.batching.max_batch_size
        runtime = shadow.runtime
        if len(copies) == 1 or limit <= 0 or runtime is None or not runtime.signature.batchable:
            return [_Send([c]) for c in copies]
        batches: list[_Send] = []
        open_: dict[tuple[object, ...], tuple[list[_Copy], int]] = {}
        for copy in copies:
            layout, rows = _layout(copy), _rows(copy.request.inputs)
            batch, filled = open_.get(layout, ([], 0))
            if batch and filled + rows > limit:
                batches.append(_Send(batch))
                batch, filled = [], 0
            batch.append(copy)
            open_[layout] = (batch, filled + rows)
        batches.extend(_Send(batch) for batch, _ in open_.values())
        return batches

    async def _shadow(self, shadow: ServedVersion, send: _Send) -> None:
        """Send the batch; when it fails, send its halves, until each failing copy stands alone (as the batcher
        isolates a failing request), so one bad copy is the only one counted as failed."""
        try:
            await self._run(shadow, send)
        except Exception as exc:
            copies = send.copies
            if len(copies) == 1:
                self._failed(shadow, copies[0], exc)
                return
            mid = len(copies) // 2
            await self._shadow(shadow, _Send(copies[:mid]))
            await self._shadow(shadow, _Send(copies[mid:]))

    async def _run(self, shadow: ServedVersion, send: _Send) -> None:
        runtime, batcher = shadow.runtime, shadow.batcher
        if runtime is None or batcher is None:
            raise RuntimeError(shadow.not_ready_reason())
        copies = send.copies
        first = copies[0].request
        if send.inputs is not None and send.primary is not None:
            request = InferRequest(model=first.model, version=first.version, inputs=dict(send.inputs))
            primary = send.primary
            counts = [c.stop - c.start for c in copies]
        elif len(copies) == 1:
            request = first
            primary = copies[0].primary
            counts = []  # compared as it is, below
        else:
            inputs = {n: np.concatenate([c.request.inputs[n] for c in copies]) for n in first.inputs}
            request = InferRequest(model=first.model, version=first.version, inputs=inputs)
            primary = {n: np.concatenate([c.primary[n] for c in copies]) for n in copies[0].primary}
            counts = [_rows(c.request.inputs) for c in copies]
        rows = validate(request, runtime.signature, shadow.batching.max_batch_size)
        outputs, _ = await batcher.submit(request.inputs, rows, None, first.timeout_s)
        rules = self._rules_for(shadow)
        alone = len(copies) == 1 and send.inputs is None
        tensors = BatchTensors(request.inputs, outputs, rows, alone)
        if alone:  # as it is (a model without a batch dimension included)
            verdict = compare_outputs(primary, outputs, rules)
            self._compared(shadow, copies, tensors, [verdict.agreed], [verdict.mean_abs_diff], [rows])
        else:
            agreed, diffs = batch_verdicts(primary, outputs, counts, rules)
            self._compared(shadow, copies, tensors, agreed, diffs, counts)

    def _compared(
        self,
        shadow: ServedVersion,
        copies: list[_Copy],
        tensors: BatchTensors,
        agreed: Sequence[bool],
        diffs: Sequence[float | None],
        counts: Sequence[int],
    ) -> None:
        """Count and log the batch's copies (`agreed` and `diffs`: each copy's verdict and mean absolute
        difference); the log keeps the batch's tensors once (`tensors`: the copies' inputs and the shadow's
        outputs, each copy's rows in turn)."""
        labels = _key(shadow)
        now = self._clock()
        agreeing = sum(agreed)
        compared = len(copies)
        latency, abs_diff, agreed_count, disagreed_count = self._figures_of(labels)
        agreed_count.inc(agreeing)
        disagreed_count.inc(compared - agreeing)
        totals = self._agreement[labels]
        totals[0] += agreeing
        totals[1] += compared
        revision = copies[0].revision
        if all(c.revision == revision for c in copies):
            self._windows.record_shadows(shadow.model, shadow.version, revision, compared, agreeing)
        else:  # the routing policy changed while the batch's requests were in flight
            by_revision: dict[int, list[int]] = {}
            for copy, same in zip(copies, agreed, strict=True):
                tally = by_revision.setdefault(copy.revision, [0, 0])
                tally[0] += 1
                tally[1] += same
            for rev, (n, agreeing_n) in by_revision.items():
                self._windows.record_shadows(shadow.model, shadow.version, rev, n, agreeing_n)
        elapsed = [now - c.queued for c in copies]
        for seconds in elapsed:
            latency.observe(seconds)
        for diff in diffs:
            if diff is not None:
                abs_diff.observe(diff)
        self._log_copies(shadow, copies, tensors, counts, elapsed)

    def _log_copies(
        self,
        shadow: ServedVersion,
        copies: list[_Copy],
        tensors: BatchTensors,
        counts: Sequence[int],
        elapsed: Sequence[float],
    ) -> None:
        """Log the answered copies: each its rows of the batch's tensors, kept once for the batch; a lone copy
        is encoded at once (cheaper than handing its arrays over)."""
        log = self._predictions
        if log is None:
            return
        rate = shadow.config.logging.rate
        if tensors.whole:
            copy = copies[0]
            if copy.prediction_id:
                outputs = dict(tensors.outputs)
                inputs = copy.request.inputs
                log.record(
                    copy.prediction_id,
                    shadow.model,
                    shadow.version,
                    ROUTE_SHADOW,
                    inputs,
                    outputs,
                    elapsed[0],
                    "ok",
                    rate,
                )
            return
        slots: list[tuple[str, int, int, float]] = []
        offset = 0
        for copy, rows, seconds in zip(copies, counts, elapsed, strict=True):
            if copy.prediction_id:
                slots.append((copy.prediction_id, offset, offset + rows, seconds))
            offset += rows
        log.record_batch(tensors, shadow.model, shadow.version, ROUTE_SHADOW, slots, rate)

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


def _whole_primary_batch(shadow: ServedVersion, copies: list[_Copy]) -> _Send | None:
    """The copies as their primary runtime batch's arrays, as they are, when they are every request of that
    batch of several, in its order, each answered with every output the batch computed, and the shadow batches
    that many rows: the common case, where nothing needs concatenating. None otherwise."""
    tensors = copies[0].batch
    runtime = shadow.runtime
    if tensors is None or tensors.whole or runtime is None or not runtime.signature.batchable:
        return None
    if not 0 < tensors.rows <= shadow.batching.max_batch_size:
        return None
    outputs = len(tensors.outputs)
    end = 0
    for copy in copies:
        if copy.batch is not tensors or copy.start != end or len(copy.primary) != outputs:
            return None
        end = copy.stop
    if end != tensors.rows:
        return None
    return _Send(copies, tensors.inputs, tensors.outputs)


def _key(shadow: ServedVersion) -> tuple[str, str]:
    return shadow.model, shadow.version
