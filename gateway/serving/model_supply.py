"""Where the files of the versions served come from: the repository's listing and, for an object store, the
model cache between it and the runtimes.

It puts the cache in front of any runtime factory (a version from an object store is fetched, or found in
the cache, then loaded from its local file), keeps the cache within its bound after each fetch and each
unload (never evicting a version this process serves), publishes the cache's size, and describes the
repository for /admin/repository. A local repository passes through untouched: nothing is copied.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.observability.metrics import GatewayMetrics
from gateway.serving.registry import ModelRegistry, RuntimeFactory, VersionState
from gateway.serving.repository import ModelSource, RepositoryListing, VersionSource
from gateway.serving.repository_remote import ObjectStoreListing
from runtimes.base import ModelRuntime

log = logging.getLogger(__name__)

LIVE = (VersionState.READY, VersionState.LOADING, VersionState.UNRESPONSIVE)
"""States of a version whose file must stay: it serves, or is about to."""


class ModelSupply:
    def __init__(self, listing: RepositoryListing, metrics: GatewayMetrics) -> None:
        self.listing = listing
        self._metrics = metrics
        self._registry: ModelRegistry | None = None

    def attach(self, registry: ModelRegistry) -> None:
        """The registry whose live versions the cache keeps; told of each unload."""
        self._registry = registry
        registry.on_unloaded = self.cache_changed

    def fetching(self, factory: RuntimeFactory) -> RuntimeFactory:
        """`factory` behind the model cache."""

        async def load(source: ModelSource, version: VersionSource) -> ModelRuntime:
            remote = version.remote
            if remote is None:
                return await factory(source, version)
            try:
                path = await asyncio.to_thread(self.materialize, source, version)
            finally:
                self.cache_changed()
            try:
                return await factory(source, replace(version, artifact=path))
            except Exception as exc:  # name the object, not only its copy in the cache
                raise RuntimeError(f"{self.listing.describe()}/{remote.key} (cached as {path}): {exc}") from exc

        return load

    def materialize(self, source: ModelSource, version: VersionSource) -> Path:
        """Blocking: the version's file, fetched into the cache when it is remote."""
        return materialize(self.listing, source, version)

    def cache_changed(self) -> None:
        """Evict what the cache's bound asks, never a version this process serves; publish the cache's size.
        On the event loop, where the registry changes (a few stat calls)."""
        listing = self.listing
        if not isinstance(listing, ObjectStoreListing) or self._registry is None:
            return
        keep = {
            listing.cache.path(f"{name}/{version}/{served.config.runtime.filename}")
            for name, model in self._registry.models.items()
            for version, served in model.versions.items()
            if served.state in LIVE
        }
        try:
            listing.cache.evict(keep)
            self._metrics.model_cache_bytes.set(listing.cache.usage())
        except OSError as exc:
            log.warning("model cache: %s", exc)

    def status(self, poll_s: float | None) -> dict[str, Any]:
        """The repository as /admin/repository shows it (a URL never carries credentials)."""
        status: dict[str, Any] = {"location": self.listing.describe(), "poll_s": poll_s, "cache": None}
        if isinstance(self.listing, ObjectStoreListing):
            cache = self.listing.cache
            status["cache"] = {"dir": str(cache.root), "bytes": cache.usage(), "max_bytes": cache.max_bytes}
        return status


def materialize(listing: RepositoryListing, source: ModelSource, version: VersionSource) -> Path:
    """Blocking: the version's file on local disk, fetched into the listing's cache when it is remote (checked
    against the digest config.yaml gives for it)."""
    digests = source.config.runtime.sha256
    expected = digests.get(int(version.version)) if version.version.isdigit() else None
    return listing.materialize(version, expected)
