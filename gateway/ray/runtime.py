"""The runtime seam's Ray placement: a version served by its own Ray Serve deployment.

To an ingress replica's registry and batcher this is a runtime like any other: it answers a batch. The
batch goes to the version's deployment through a `DeploymentHandle`, whole (a handle call costs a few
milliseconds; one per request would cost that per request). A batch is a pure function of its inputs, so
one lost with its replica (killed, or restarting under Serve) is sent once more, to whichever replica Serve
picks next: callers do not see a replica die.

`RayPlacement` is the registry's runtime factory in Ray mode. Loading a version makes sure its Serve
application exists, deploying it from the model's config.yaml when it does not (the leader does that when a
version is loaded through the admin API; the driver deploys the repository's versions at start-up). Closing a
runtime removes nothing: an ingress replica that restarts closes every runtime it had. The driver removes the
application of a version whose desired state is "unloaded" (`gateway.ray.driver`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import ray.exceptions
from ray import serve

from gateway.ray.naming import version_app, version_options
from gateway.ray.repository import RepositoryRef
from gateway.ray.version import VersionServer
from gateway.serving.repository import ModelSource, VersionSource
from runtimes.base import ModelRuntime, RuntimeError_, RuntimeInfo, RuntimeTimeout
from runtimes.tensors import ModelSignature

log = logging.getLogger(__name__)

_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class RayVersionRuntime(ModelRuntime):
    def __init__(self, app: str, handle: Any, signature: ModelSignature, info: RuntimeInfo, timeout_s: float) -> None:
        self.app = app
        self._handle = handle
        self._signature = signature
        self._info = replace(info, parameters={**info.parameters, "placement": f"ray:{app}"})  # the digest too
        self._timeout_s = timeout_s
        self.retried = 0
        """Batches sent a second time after their replica was lost."""

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    @property
    def info(self) -> RuntimeInfo:
        return self._info

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        wanted = list(outputs) if outputs is not None else None
        for attempt in (1, 2):
            try:
                answer: dict[str, np.ndarray] = await asyncio.wait_for(
                    self._handle.infer.remote(dict(inputs), wanted), self._timeout_s
                )
                return answer
            except asyncio.TimeoutError:
                raise RuntimeTimeout(f"{self.app}: no answer in {self._timeout_s:g} s") from None
            except _LOST as exc:
                if attempt == 2:
                    raise RuntimeError_(f"{self.app}: replica lost twice: {exc}") from None
                self.retried += 1
                log.warning("%s: replica lost mid-batch (%s); sending the batch again", self.app, type(exc).__name__)
            except ray.exceptions.RayTaskError as exc:
                raise RuntimeError_(str(exc.cause) if exc.cause is not None else str(exc)) from None
        raise AssertionError("unreachable")


class RayPlacement:
    """The registry's runtime factory on Ray: a version is its Serve application, deployed on first load.

    Deploying goes through one named actor per cluster (`Deployer`), which takes calls one at a time: ingress
    replicas starting together would otherwise each deploy the same version, and Serve restarts the replicas
    of an application deployed again, even unchanged.
    """

    def __init__(self, repository: RepositoryRef) -> None:
        self.repository = repository

    async def __call__(self, source: ModelSource, version: VersionSource) -> ModelRuntime:
        if source.config.runtime.kind != "onnx":
            raise RuntimeError_(f"model '{source.name}': Ray mode serves ONNX versions (runtime.kind onnx)")
        app = version_app(source.name, version.version)
        for attempt in range(3):  # an application removed between its check and its first call is deployed again
            if not await asyncio.to_thread(running, app):
                deployer = Deployer.options(name=DEPLOYER, get_if_exists=True, namespace=NAMESPACE).remote()  # type: ignore[attr-defined]
                await deployer.ensure.remote(self.repository, source.name, version.version)
            handle = serve.get_app_handle(app)
            try:
                signature, info, _ = await asyncio.wait_for(handle.metadata.remote(), 60.0)
                break
            except (asyncio.TimeoutError, *_LOST) as exc:
                if attempt == 2:
                    raise RuntimeError_(f"{app}: no replica answered: {exc}") from None
        timeout_s = (source.config.timeout_ms or 30_000) / 1000.0
        return RayVersionRuntime(app, handle, signature, info, timeout_s)


NAMESPACE = "sluice"
DEPLOYER = "sluice-deployer"


@ray.remote(num_cpus=0)  # a synchronous actor takes one call at a time
class Deployer:
    """Deploys versions' applications, one at a time for the whole cluster."""

    def ensure(self, repository: RepositoryRef, model: str, version: str) -> None:
        app = version_app(model, version)
        if running(app):
            return
        _, source, found = repository.find(model, version)
        log.info("deploying %s", app)
        deploy_version(repository, source, found)


def running(app: str) -> bool:
    status = serve.status().applications.get(app)
    return status is not None and str(status.status) in ("RUNNING", "ApplicationStatus.RUNNING")


def version_application(repository: RepositoryRef, source: ModelSource, version: VersionSource) -> Any:
    """One version's Serve application. (Build these in one thread: Ray's deployment options are not
    thread-safe to construct.)"""
    deployment = serve.deployment(name="version", **version_options(source.config))(VersionServer)
    return deployment.bind(repository, source.name, version.version)


def deploy_version(
    repository: RepositoryRef, source: ModelSource, version: VersionSource, application: Any = None
) -> None:
    """Deploy (or redeploy) one version's application and wait until it runs."""
    app = application if application is not None else version_application(repository, source, version)
    serve.run(app, name=version_app(source.name, version.version), route_prefix=None)
