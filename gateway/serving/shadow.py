"""Shadow traffic: a copy of a request to other versions, compared with the primary's answer.

The copy is sent after the primary answered, as a task of its own: it never changes the
response and never holds it up. Shadows use spare capacity only: a copy is dropped (and
counted) when the shadow already has a full batch waiting, or too many copies are in flight.
Under saturation the shadow is sampled down instead of taking CPU from real callers.
Observers never break requests: every error is caught and counted. Each shadow answer (or
failure) goes to the prediction log with route "shadow" and the request's prediction id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import numpy as np

from gateway.observability.metrics import GatewayMetrics
from gateway.serving.registry import ServedVersion
from gateway.serving.request import InferRequest
from gateway.serving.validation import validate
from gateway.serving.window_stats import WindowRecorder
from monitors.prediction_log import ROUTE_SHADOW, PredictionLog
from monitors.shadow_compare import OutputRule, compare_outputs

log = logging.getLogger(__name__)

RulesFor = Callable[[ServedVersion], Mapping[str, OutputRule]]


class ShadowDispatcher:
    def __init__(
        self,
        metrics: GatewayMetrics,
        windows: WindowRecorder,
        rules_for: RulesFor | None = None,
        max_in_flight: int = 64,
        predictions: PredictionLog | None = None,
    ) -> None:
        self._metrics = metrics
        self._predictions = predictions
        self._windows = windows
        self._rules_for = rules_for or (lambda _: {})
        self._max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._agreement: dict[tuple[str, str], list[int]] = {}

    def dispatch(
        self,
        request: InferRequest,
        primary: Mapping[str, np.ndarray],
        shadows: tuple[ServedVersion, ...],
        prediction_id: str = "",
        revision: int = 0,
    ) -> None:
        """Copy the request to each shadow with room for it; `prediction_id` (the primary's response id)
        names the shadow's record in the prediction log ("": not logged); `revision` is the routing policy's."""
        for shadow in shadows:
            batcher = shadow.batcher
            busy = batcher is None or batcher.queue_depth >= max(1, batcher.config.max_batch_size)
            if busy or len(self._tasks) >= self._max_in_flight:
                self._metrics.shadow_dropped.labels(shadow.model, shadow.version).inc()
                continue
            task = asyncio.get_running_loop().create_task(
                self._shadow(request, primary, shadow, prediction_id, revision)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _shadow(
        self,
        request: InferRequest,
        primary: Mapping[str, np.ndarray],
        shadow: ServedVersion,
        prediction_id: str,
        revision: int,
    ) -> None:
        labels = (shadow.model, shadow.version)
        started = time.perf_counter()
        try:
            runtime, batcher = shadow.runtime, shadow.batcher
            if runtime is None or batcher is None:
                raise RuntimeError(shadow.not_ready_reason())
            rows = validate(request, runtime.signature, shadow.batching.max_batch_size)
            outputs, _ = await batcher.submit(request.inputs, rows, None, request.timeout_s)
        except Exception as exc:
            self._metrics.shadow_requests.labels(*labels, "error").inc()
            self._windows.record_shadow(shadow.model, shadow.version, revision, agreed=False)
            log.info("shadow %s/%s failed: %s", shadow.model, shadow.version, exc)
            self._log(request, shadow, prediction_id, {}, time.perf_counter() - started, "error")
            return
        elapsed = time.perf_counter() - started
        self._metrics.shadow_latency.labels(*labels).observe(elapsed)
        result = compare_outputs(primary, outputs, self._rules_for(shadow))
        self._metrics.shadow_requests.labels(*labels, "agreed" if result.agreed else "disagreed").inc()
        if result.mean_abs_diff is not None:
            self._metrics.shadow_abs_diff.labels(*labels).observe(result.mean_abs_diff)
        counts = self._agreement.setdefault(labels, [0, 0])
        counts[0] += int(result.agreed)
        counts[1] += 1
        self._metrics.shadow_agreement.labels(*labels).set(counts[0] / counts[1])
        self._windows.record_shadow(shadow.model, shadow.version, revision, agreed=result.agreed)
        self._log(request, shadow, prediction_id, outputs, elapsed, "ok")

    def _log(
        self,
        request: InferRequest,
        shadow: ServedVersion,
        prediction_id: str,
        outputs: dict[str, np.ndarray],
        elapsed: float,
        outcome: str,
    ) -> None:
        if self._predictions is not None and prediction_id:
            self._predictions.record(
                prediction_id,
                shadow.model,
                shadow.version,
                ROUTE_SHADOW,
                request.inputs,
                outputs,
                elapsed,
                outcome,
                shadow.config.logging.rate,
            )

    async def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for the shadow copies in flight; used on shutdown and by tests."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        await self.wait_idle(timeout_s)
