"""The model repository as Ray mode's processes reach it: a local path, the same on every node, or an object-store
URL that each node's version replicas fetch from into a cache of their own, so no node needs a shared filesystem.

The driver, the ingress replicas (the listing and each model's config.yaml), the deployer and the version replicas
(the version's file) all open it from this one picklable reference, which carries no credential: each process takes
those from its provider's standard environment and files, as the gateway does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.serving.model_supply import materialize
from gateway.serving.repository import ModelSource, RepositoryListing, VersionSource, scan_model
from gateway.serving.repository_remote import open_repository
from gateway.settings import GatewaySettings

CACHE_DIR_ENV = "SLUICE_MODEL_CACHE_DIR"


@dataclass(frozen=True)
class RepositoryRef:
    location: str
    """A local folder (absolute) or an object-store URL."""
    cache_dir: str
    """Where a node keeps what it fetched from an object store (a path of each node's own)."""
    max_bytes: int | None = None

    @classmethod
    def of(cls, settings: GatewaySettings) -> RepositoryRef:
        repo = settings.model_repo
        location = str(repo.resolve()) if isinstance(repo, Path) else repo
        return cls(location, str(settings.cache_dir.resolve()), settings.model_cache_max_bytes)

    def open(self) -> RepositoryListing:
        """The listing, its cache where this node's own SLUICE_MODEL_CACHE_DIR says (a node started with one of
        its own), else where the gateway's settings said."""
        cache_dir = os.environ.get(CACHE_DIR_ENV) or self.cache_dir
        return open_repository(self.location, Path(cache_dir), max_bytes=self.max_bytes)

    def find(self, model: str, version: str) -> tuple[RepositoryListing, ModelSource, VersionSource]:
        """The model as the repository has it now, and one of its versions (RuntimeError naming what is missing)."""
        listing = self.open()
        listing.refresh(model)
        source = scan_model(listing, model, every_version=True)
        match = [v for v in source.versions if v.version == version]
        if not match:
            raise RuntimeError(source.error or f"model '{model}' has no version '{version}' in {listing.describe()}")
        return listing, source, match[0]

    def fetch(self, model: str, version: str) -> tuple[ModelSource, VersionSource]:
        """Blocking: the version with its file on this node's disk (fetched and verified when it is remote)."""
        listing, source, found = self.find(model, version)
        return source, replace(found, artifact=materialize(listing, source, found))
