"""The data plane: what both protocol adapters call, in the manner of MLServer's DataPlane.

Each adapter converts its wire format to an `InferRequest`, calls `infer`, and converts the
`InferResponse` back; health and metadata are here too, so HTTP and gRPC cannot drift apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from gateway.errors import (
    InvalidInput,
    ModelNotReady,
    ShuttingDown,
    SluiceError,
    mapping_of,
)
from gateway.observability.logs import span_context
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.statistics import read_totals
from gateway.observability.tracing import RequestSpans
from gateway.serving.batcher import Timing
from gateway.serving.policy_view import PolicyView
from gateway.serving.registry import ModelRegistry, ServedVersion
from gateway.serving.request import InferRequest, InferResponse
from gateway.serving.router import pick_version, policy_weights
from gateway.serving.shadow import ShadowDispatcher
from gateway.serving.triton_config import model_config
from gateway.serving.triton_index import repository_index
from gateway.serving.triton_stats import statistics_response
from gateway.serving.validation import validate
from gateway.serving.window_stats import WindowRecorder
from monitors.prediction_log import PredictionLog, batch_request_id, new_prediction_id

log = logging.getLogger(__name__)

SERVER_NAME = "sluice"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository")
"""Exactly the extensions served, under Triton's names (tests/test_triton_extensions.py calls each)."""

# Outcomes that say something about the version itself (a caller's 400 does not).
_ANALYSED = frozenset(("ok", "error", "timeout", "overloaded"))


def _by_number(version: str) -> tuple[int, str]:
    return (len(version), version)


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return mapping_of(exc).outcome


class DataPlane:
    def __init__(
        self,
        registry: ModelRegistry,
        spans: RequestSpans,
        metrics: GatewayMetrics,
        policies: PolicyView,
        windows: WindowRecorder,
        shadows: ShadowDispatcher,
        server_name: str = SERVER_NAME,
        predictions: PredictionLog | None = None,
    ) -> None:
        self.registry = registry
        self.predictions = predictions
        """Where each finished request's record goes (None: no prediction log)."""
        self.metrics = metrics
        self.policies = policies
        """What routes requests: read here, written by the control plane or the replica's follower."""
        self.windows = windows
        """Per-version statistics by routing revision, which the replica publishes for rollout analysis."""
        self.shadows = shadows
        self.spans = spans
        self.tracer = spans.tracer
        self.server_name = server_name
        self.started = False
        self.draining = False
        self.cohort_ready: Callable[[], bool] = lambda: True
        """With workers: whether every worker of this machine is ready (the supervisor shares it)."""

    # -- health and metadata ------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready once every model's load was attempted and warmed, until draining starts.

        A broken model reports not-ready on its own endpoint; it does not take the whole
        gateway (and every healthy model) out of a load balancer's rotation.
        """
        return self.started and not self.draining and self.cohort_ready()

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.server_name, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str | None) -> bool:
        model = self.registry.get_model(name)
        if version:
            return self.registry.get_version(name, version).ready
        return bool(model.ready_versions())

    def _loaded(self, name: str, version: str | None) -> ServedVersion:
        """The named version, or the one the policy serves by default; NotFound/NotReady when it cannot answer."""
        model = self.registry.get_model(name)
        served = (
            self.registry.get_version(name, version)
            if version
            else pick_version(model, self.policies.policy(name).stable)
        )
        if served.runtime is None:
            raise ModelNotReady(served.not_ready_reason())
        return served

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        model = self.registry.get_model(name)
        served = self._loaded(name, version)
        assert served.runtime is not None
        sig = served.runtime.signature
        info = served.runtime.info
        return {
            "name": name,
            "versions": sorted(model.versions, key=_by_number),
            "platform": info.platform,
            "inputs": [s.to_v2() for s in sig.inputs],
            "outputs": [s.to_v2() for s in sig.outputs],
            "parameters": {
                **info.parameters,
                "execution_provider": info.execution_provider,
                "version": served.version,
                "max_batch_size": str(served.batching.max_batch_size),
            },
        }

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """Triton's model configuration of the version (the default one when none is named)."""
        return model_config(self._loaded(name, version))

    def model_statistics(self, name: str | None, version: str | None) -> dict[str, Any]:
        """Triton's statistics: every version of every model, of one model, or of one version (summed over
        every worker of this machine)."""
        if name:
            model = self.registry.get_model(name)
            if version:
                self.registry.get_version(name, version)
                keys = [(name, version)]
            else:
                keys = [(name, v) for v in sorted(model.versions, key=_by_number)]
        elif version:
            raise InvalidInput("a version needs a model name")
        else:
            keys = [
                (m, v)
                for m in sorted(self.registry.models)
                for v in sorted(self.registry.models[m].versions, key=_by_number)
            ]
        return statistics_response(keys, read_totals(self.metrics.statistics_families()))

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return repository_index(self.registry, ready_only)

    def publish_weights(self, model: str) -> None:
        """Set the traffic-weight gauges of the model's versions from the policy in force and their states."""
        served = self.registry.models.get(model)
        if served is None:
            return
        weights = policy_weights(served, self.policies.policy(model))
        for version in served.versions:
            self.metrics.traffic_weight.labels(model, version).set(weights.get(version, 0.0))

    # -- inference ----------------------------------------------------------------------

    async def infer(self, request: InferRequest, protocol: str) -> InferResponse:
        started = time.perf_counter()
        served: ServedVersion | None = None
        route = ""
        revision = 0
        span = self.spans.start(request.trace_context, request.model, protocol)
        # Log lines made while serving this request (the adapters' included) name its trace and span.
        span_context.set(span.get_span_context())
        try:
            if self.draining:
                raise ShuttingDown("gateway is shutting down")
            routed = self.policies.route(self.registry.get_model(request.model), request)
            served = routed.version
            route = routed.route.value
            revision = routed.revision
            span.set_attribute("sluice.route", route)
            response, timing = await self._infer_version(request, served, span, protocol)
            if routed.shadows:
                shadows, outputs, rows = routed.shadows, response.outputs, (timing.tensors, timing.start, timing.stop)
                self.shadows.dispatch(request, outputs, shadows, response.id, revision, *rows)
        except BaseException as exc:
            outcome = outcome_of(exc)
            elapsed = self._count(served, revision, protocol, outcome, started)
            self._log(request, request.id, served, route, {}, elapsed, outcome)
            span.set_status(Status(StatusCode.ERROR, str(exc) if isinstance(exc, SluiceError) else repr(exc)))
            span.end()
            raise
        elapsed = self._count(served, revision, protocol, "ok", started)
        tensors = timing.tensors
        log = self.predictions
        if tensors is not None and not tensors.whole and log is not None:
            # A batch of several requests: its tensors are logged once, for all of them. A request that ran
            # alone is cheaper to encode at once (`_log`) than to hand its arrays over.
            wanted = tuple(o.name for o in request.outputs) if request.outputs is not None else None
            log.record_batched(
                tensors,
                timing.start,
                timing.stop,
                response.id,
                served.model,
                served.version,
                route,
                wanted,
                elapsed,
                served.config.logging.rate,
            )
        else:
            self._log(request, response.id, served, route, response.outputs, elapsed, "ok")
        span.end()
        return response

    def _log(
        self,
        request: InferRequest,
        prediction_id: str,
        served: ServedVersion | None,
        route: str,
        outputs: dict[str, Any],
        elapsed: float,
        outcome: str,
    ) -> None:
        """Offer the request's record to the prediction log: about a microsecond (the tensors' bytes are
        copied once), never blocks, never raises. A request that failed before a version was chosen is not logged;
        one that failed after gets a generated id (the caller saw none) and no outputs."""
        log = self.predictions
        if log is None or served is None:
            return
        log.record(
            prediction_id or new_prediction_id(),
            served.model,
            served.version,
            route,
            request.inputs,
            outputs,
            elapsed,
            outcome,
            served.config.logging.rate,
        )

    async def _infer_version(
        self, request: InferRequest, served: ServedVersion, span: trace.Span, protocol: str
    ) -> tuple[InferResponse, Timing]:
        runtime, batcher = served.runtime, served.batcher
        if runtime is None or batcher is None:
            raise ModelNotReady(served.not_ready_reason())
        span.set_attribute("sluice.version", served.version)
        rows = validate(request, runtime.signature, served.batching.max_batch_size)
        flagged = None if served.guards is None else self._guard(served, request)
        wanted = [o.name for o in request.outputs] if request.outputs is not None else None
        timeout = request.timeout_s if request.timeout_s is not None else served.batching.default_timeout_s
        if request.deadline_s is not None and (timeout is None or request.deadline_s < timeout):
            timeout = request.deadline_s
        outputs, timing = await batcher.submit(request.inputs, rows, wanted, timeout, span.get_span_context())
        if timing.started_ns:
            served.metrics.queue_wait.observe((timing.started_ns - timing.enqueued_ns) / 1e9)
            served.metrics.statistics.ran(
                timing.enqueued_ns, timing.gathered_ns, timing.started_ns, timing.finished_ns, timing.split_ns
            )
            if span.is_recording():
                ctx = trace.set_span_in_context(span)
                where = {"sluice.model": served.model, "sluice.version": served.version}
                self.tracer.start_span("queue_wait", context=ctx, start_time=timing.enqueued_ns, attributes=where).end(
                    end_time=timing.started_ns
                )
                run = self.tracer.start_span(
                    "batch_run",
                    context=ctx,
                    start_time=timing.started_ns,
                    attributes={
                        **where,
                        "sluice.batch.rows": timing.batch_rows,
                        "sluice.batch.requests": timing.batch_requests,
                    },
                )
                run.end(end_time=timing.finished_ns)
        prediction_id = request.id
        if not prediction_id:
            tensors = timing.tensors
            if tensors is not None and not tensors.whole:  # logged with its batch (`infer`), which the id names
                prediction_id = batch_request_id(tensors, timing.start)
            else:
                prediction_id = new_prediction_id()
        response = InferResponse(model=served.model, version=served.version, id=prediction_id, outputs=outputs)
        if flagged:
            response.parameters["flagged_features"] = flagged
        return response, timing

    def _guard(self, served: ServedVersion, request: InferRequest) -> str | None:
        """Check the model's input guards: refuse (InvalidInput naming each broken feature) or return the broken
        features' names for the response to flag; every broken one is counted."""
        guards = served.guards
        assert guards is not None
        violations = guards.check(request.inputs)
        if not violations:
            return None
        action = "refused" if guards.refuse else "flagged"
        counter = self.metrics.input_guard_violations
        for v in violations:
            counter.labels(served.model, served.version, v.feature, action).inc()
        if guards.refuse:
            raise InvalidInput("; ".join(v.message for v in violations))
        return ",".join(v.feature for v in violations)

    def _count(self, served: ServedVersion | None, revision: int, protocol: str, outcome: str, started: float) -> float:
        """Count the finished request; returns its latency in seconds."""
        if served is None:
            # Never label with the caller's model name: a scan of made-up names must not grow series.
            self.metrics.requests.labels("", "", protocol, outcome).inc()
            return time.perf_counter() - started
        m = served.metrics
        elapsed = time.perf_counter() - started
        m.outcome(protocol, outcome).inc()
        m.duration(protocol).observe(elapsed)
        m.statistics.request(outcome == "ok", elapsed)
        if outcome in _ANALYSED:
            self.windows.record(served.model, served.version, revision, outcome == "ok", elapsed)
        return elapsed
