"""Served models and versions: what is loaded, in which state, behind which batcher.

A version is READY only after its runtime loaded and warmed up; a version that failed keeps
its error message for metadata and the logs, and never takes the gateway down with it. A READY
version whose runtime calls keep hanging becomes UNRESPONSIVE (its watchdog says so) until a probe
answers again, or it is reloaded.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.trace import Tracer

from gateway.errors import ModelNotFound, ModelNotReady
from gateway.observability.metrics import GatewayMetrics, VersionMetrics
from gateway.observability.tracing import BatchTelemetry
from gateway.serving.batch_policy import BatchingConfig
from gateway.serving.batcher import Batcher, BatchObserver
from gateway.serving.guards import InputGuards
from gateway.serving.model_config import ModelConfig
from gateway.serving.repository import (
    ModelSource,
    RepositoryListing,
    VersionSource,
    as_listing,
    scan_model,
    scan_repository,
)
from gateway.serving.watchdog import RuntimeWatchdog
from runtimes.base import ModelRuntime

log = logging.getLogger(__name__)

RuntimeFactory = Callable[[ModelSource, VersionSource], Awaitable[ModelRuntime]]


class VersionState(str, enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNRESPONSIVE = "UNRESPONSIVE"
    """Loaded, but its runtime calls keep hanging: not routed to until a probe answers (or a reload)."""
    FAILED = "FAILED"
    UNLOADING = "UNLOADING"
    UNLOADED = "UNLOADED"


@dataclass
class ServedVersion:
    model: str
    version: str
    config: ModelConfig
    metrics: VersionMetrics
    state: VersionState = VersionState.LOADING
    error: str | None = None
    runtime: ModelRuntime | None = None
    batcher: Batcher | None = None
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    watchdog: RuntimeWatchdog | None = None
    guards: InputGuards | None = None
    """The model's input guards compiled for this version's signature (None: it has none)."""
    sha256: str | None = None
    """SHA-256 of the artifact the runtime was loaded from (None: a remote runtime)."""

    @property
    def ready(self) -> bool:
        return self.state is VersionState.READY

    def not_ready_reason(self) -> str:
        """Why this version cannot serve, naming the file when a load failed."""
        why = f": {self.error}" if self.error else ""
        return f"model '{self.model}' version '{self.version}' is {self.state.value}{why}"


@dataclass
class ServedModel:
    name: str
    config: ModelConfig
    versions: dict[str, ServedVersion] = field(default_factory=dict)
    error: str | None = None

    def ready_versions(self) -> list[ServedVersion]:
        return [v for v in self.versions.values() if v.ready]


def version_batcher(
    runtime: ModelRuntime,
    config: ModelConfig,
    name: str,
    observer: BatchObserver | None,
    watchdog: RuntimeWatchdog | None = None,
) -> Batcher:
    """The started batcher for one version's runtime, from its config (a model with no batch dimension is served
    one request at a time): the same in the gateway's process and in a Ray Serve version replica. It runs at
    least as many batches at once as the runtime can (`ModelRuntime.concurrency`: `runtime.instances`, devices).

    With a `watchdog` every batch goes through it (a runtime thread that ONNX Runtime's terminate flag reaches),
    never inline on the event loop nor on a thread the watchdog cannot reach."""
    batching = config.batching_config()
    if not runtime.signature.batchable and batching.max_batch_size > 0:
        batching = BatchingConfig(**{**batching.__dict__, "max_batch_size": 0})
    if runtime.concurrency > batching.max_concurrent_batches:  # every session (or runtime process) kept busy
        batching = BatchingConfig(**{**batching.__dict__, "max_concurrent_batches": runtime.concurrency})
    batcher = Batcher(
        runtime.infer if watchdog is None else watchdog.call,
        batching,
        observer=observer,
        name=name,
        synchronous=runtime.synchronous() if watchdog is None else None,
        inline_max_s=config.runtime.inline_max_ms / 1000.0,
    )
    batcher.start()
    return batcher


class ModelRegistry:
    def __init__(
        self,
        repo: Path | RepositoryListing,
        metrics: GatewayMetrics,
        factory: RuntimeFactory,
        tracer: Tracer | None = None,
        on_batch: Callable[[str, str, int], None] | None = None,
    ) -> None:
        """`on_batch(model, version, rows)`: told of every runtime call (the window statistics' batch sizes)."""
        self.listing = as_listing(repo)
        self.repo = self.listing.root
        """The local folder of each model's own files (an object-store repository's: its cache)."""
        self._tracer = tracer
        self._on_batch = on_batch
        self._metrics = metrics
        self._factory = factory
        self.models: dict[str, ServedModel] = {}
        self.on_state_change: Callable[[str], None] | None = None
        """Called with a model's name when one of its versions stops or starts answering (the weights follow)."""
        self.on_unloaded: Callable[[], None] | None = None
        """Called after a version is unloaded (the model cache may evict its file)."""

    async def load_all(self) -> None:
        """Scan the repository and load every selected version concurrently."""
        sources = await asyncio.to_thread(scan_repository, self.listing)
        jobs = []
        for source in sources:
            model = ServedModel(source.name, source.config, error=source.error)
            self.models[source.name] = model
            if source.error:
                log.error("model %s not loaded: %s", source.name, source.error)
            for vs in source.versions:
                served = ServedVersion(
                    source.name, vs.version, source.config, self._metrics.version(source.name, vs.version)
                )
                served.metrics.set_ready(False)
                model.versions[vs.version] = served
                jobs.append(self._load_version(source, vs, served))
        await asyncio.gather(*jobs)

    async def _load_version(self, source: ModelSource, vs: VersionSource, served: ServedVersion) -> None:
        try:
            runtime = await self._factory(source, vs)
            await runtime.warmup()
            served.guards = InputGuards.compile(
                source.config.guards, runtime.signature, source.config.monitoring.feature_names
            )
        except Exception as exc:
            served.state = VersionState.FAILED
            served.error = str(exc)
            log.error("model %s version %s failed to load: %s", served.model, served.version, exc)
            return
        served.runtime = runtime
        served.sha256 = runtime.info.sha256
        limit_ms = source.config.watchdog.call_timeout_ms
        if limit_ms is not None:
            served.watchdog = self._watchdog(served, runtime, limit_ms / 1000.0)
        served.batcher = version_batcher(
            runtime,
            source.config,
            f"{served.model}/{served.version}",
            BatchTelemetry(served.metrics, self._tracer, self._batch_counter(served.model, served.version)),
            served.watchdog,
        )
        served.batching = batching = served.batcher.config
        runtime.on_availability(lambda reason: self._unresponsive(served, reason), lambda: self._recovered(served))
        served.metrics.set_provider(runtime.info.execution_provider)
        served.metrics.set_placement(runtime.info.device, batching.queue_capacity)
        served.metrics.set_ready(True)
        served.state = VersionState.READY
        log.info(
            "model %s version %s ready on %s (max_batch_size=%d)",
            served.model,
            served.version,
            runtime.info.execution_provider,
            batching.max_batch_size,
        )

    def _watchdog(self, served: ServedVersion, runtime: ModelRuntime, limit_s: float) -> RuntimeWatchdog:
        options = served.config.watchdog
        hangs = self._metrics.runtime_hangs.labels(served.model, served.version)
        return RuntimeWatchdog(
            runtime,
            limit_s,
            unresponsive_after=options.unresponsive_after,
            probe_interval_s=options.probe_interval_s,
            name=f"{served.model}/{served.version}",
            on_hang=hangs.inc,
            on_unresponsive=lambda reason: self._unresponsive(served, reason),
            on_recovered=lambda: self._recovered(served),
        )

    def _unresponsive(self, served: ServedVersion, reason: str) -> None:
        """Its calls hang, or its runtime's process is gone: not ready, and what is queued is refused at once."""
        if served.state is not VersionState.READY:
            return
        served.state, served.error = VersionState.UNRESPONSIVE, reason
        served.metrics.set_ready(False)
        if served.batcher is not None:
            served.batcher.fail_queued(ModelNotReady(served.not_ready_reason()))
        self._state_changed(served.model)

    def _recovered(self, served: ServedVersion) -> None:
        if served.state is not VersionState.UNRESPONSIVE:
            return
        served.state, served.error = VersionState.READY, None
        served.metrics.set_ready(True)
        self._state_changed(served.model)

    def _state_changed(self, model: str) -> None:
        if self.on_state_change is not None:
            self.on_state_change(model)

    def _batch_counter(self, model: str, version: str) -> Callable[[int], None] | None:
        on_batch = self._on_batch
        if on_batch is None:
            return None
        return lambda rows: on_batch(model, version, rows)

    async def load_version(self, name: str, version: str) -> ServedVersion:
        """Load (or reload) one version from the repository, whatever the version policy says.

        An UNRESPONSIVE version is reloaded: its old runtime and batcher are closed first."""
        model = self.get_model(name)
        current = model.versions.get(version)
        if current is not None and current.state in (VersionState.READY, VersionState.LOADING):
            return current
        if current is not None:
            await _release(current)
        source = await asyncio.to_thread(scan_model, self.listing, name, True)
        match = [v for v in source.versions if v.version == version]
        if source.error and not match:
            raise ModelNotFound(source.error)
        if not match:
            raise ModelNotFound(f"model '{name}' has no version '{version}' in the repository")
        served = ServedVersion(name, version, source.config, self._metrics.version(name, version))
        model.versions[version] = served
        await self._load_version(source, match[0], served)
        return served

    async def unload_version(self, name: str, version: str, drain_timeout_s: float) -> ServedVersion:
        """Stop routing to the version, let its in-flight requests finish, then free the runtime."""
        served = self.get_version(name, version)
        if served.state not in (VersionState.READY, VersionState.UNRESPONSIVE):
            return served
        served.state = VersionState.UNLOADING
        served.metrics.set_ready(False)
        if served.batcher is not None:
            await served.batcher.drain(drain_timeout_s)
        await _release(served)
        served.state = VersionState.UNLOADED
        log.info("model %s version %s unloaded", name, version)
        if self.on_unloaded is not None:
            self.on_unloaded()
        return served

    def sample_load(self) -> None:
        """Set each version's queue-depth and in-flight gauges from its batcher (a metrics sampler)."""
        for model in self.models.values():
            for served in model.versions.values():
                batcher = served.batcher
                served.metrics.load(batcher.queue_depth if batcher else 0, batcher.running if batcher else 0)

    def get_model(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"model '{name}' is not in the repository")
        return model

    def get_version(self, name: str, version: str) -> ServedVersion:
        model = self.get_model(name)
        served = model.versions.get(version)
        if served is None:
            raise ModelNotFound(f"model '{name}' has no version '{version}' (serving {sorted(model.versions)})")
        return served

    async def drain(self, timeout_s: float) -> bool:
        batchers = [v.batcher for m in self.models.values() for v in m.versions.values() if v.batcher]
        results = await asyncio.gather(*(b.drain(timeout_s) for b in batchers))
        return all(results)

    async def close(self) -> None:
        for model in self.models.values():
            for served in model.versions.values():
                served.metrics.set_ready(False)
                await _release(served)


async def _release(served: ServedVersion) -> None:
    """Close a version's watchdog, batcher and runtime (an unload, a reload, shutdown)."""
    if served.watchdog is not None:
        await served.watchdog.close()
    if served.batcher is not None:
        await served.batcher.close()
    if served.runtime is not None:
        await served.runtime.close()
    served.watchdog, served.batcher, served.runtime = None, None, None
