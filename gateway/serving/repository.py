"""Scan a model repository laid out as Triton's: `<repo>/<model>/<version>/model.onnx`.

Scanning never raises for one bad model: the problem is recorded on that model (naming the
file) so the others still serve and the broken one shows as not ready.

The scan reads a `RepositoryListing`, so one piece of code scans a local folder (`LocalListing`, the
files read where they are) and an object store (`gateway.serving.repository_remote`, whose listing
mirrors each model's own files into the local cache and fetches a version's file only when it loads).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.serving.model_cache import ObjectInfo
from gateway.serving.model_config import ConfigError, ModelConfig, load_model_config

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CONFIG_FILE = "config.yaml"


@dataclass
class VersionSource:
    version: str
    artifact: Path | None
    """The ONNX file; None for a remote runtime. From an object store: where the cache keeps it once fetched."""
    remote: ObjectInfo | None = None
    """From an object store: the object to fetch into `artifact` before loading (`RepositoryListing.materialize`)."""


@dataclass
class ModelSource:
    name: str
    directory: Path
    config: ModelConfig
    versions: list[VersionSource] = field(default_factory=list)
    error: str | None = None


def confined(repo: Path, path: Path) -> Path:
    """Resolve `path` and refuse it unless it stays inside the repository (symlinks included)."""
    root = repo.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise ConfigError(f"{path}: resolves outside the model repository {root}")
    return resolved


class RepositoryListing(Protocol):
    """What the scan reads of a repository, wherever it lives."""

    @property
    def root(self) -> Path:
        """The local folder holding each model's own files (config.yaml, a drift reference) as read."""

    def describe(self) -> str:
        """The repository for messages: its path, or its URL (which never carries credentials)."""

    def refresh(self, model: str | None = None) -> None:
        """Read the listing again (one model's, or all); raises RepositoryUnavailable when it cannot."""

    def model_names(self) -> list[str]: ...

    def has_model(self, model: str) -> bool: ...

    def version_numbers(self, model: str) -> list[int]: ...

    def artifact(self, model: str, version: int, filename: str) -> tuple[Path, ObjectInfo | None]:
        """Where the version's file is (or will be, once fetched), and the object to fetch (None: local)."""

    def materialize(self, version: VersionSource, expected_sha256: str | None) -> Path:
        """The version's file on local disk, fetched and verified first when it is remote."""


class LocalListing:
    """A repository in a local folder: read in place, nothing copied."""

    def __init__(self, repo: Path) -> None:
        self._repo = repo

    @property
    def root(self) -> Path:
        return self._repo

    def describe(self) -> str:
        return str(self._repo)

    def refresh(self, model: str | None = None) -> None:
        if model is None and not self._repo.is_dir():
            raise FileNotFoundError(f"model repository {self._repo} is not a directory")

    def model_names(self) -> list[str]:
        return sorted(p.name for p in self._repo.iterdir() if p.is_dir() and not p.name.startswith("."))

    def has_model(self, model: str) -> bool:
        return (self._repo / model).is_dir()

    def version_numbers(self, model: str) -> list[int]:
        return [int(p.name) for p in (self._repo / model).iterdir() if p.is_dir() and p.name.isdigit()]

    def artifact(self, model: str, version: int, filename: str) -> tuple[Path, ObjectInfo | None]:
        return confined(self._repo, self._repo / model / str(version) / filename), None

    def materialize(self, version: VersionSource, expected_sha256: str | None) -> Path:
        assert version.artifact is not None
        return version.artifact


def as_listing(repo: Path | RepositoryListing) -> RepositoryListing:
    return LocalListing(repo) if isinstance(repo, Path) else repo


def scan_repository(repo: Path | RepositoryListing) -> list[ModelSource]:
    listing = as_listing(repo)
    listing.refresh()
    return [_scan(listing, name, every_version=False) for name in listing.model_names()]


def scan_model(repo: Path | RepositoryListing, model: Path | str, every_version: bool = False) -> ModelSource:
    """Scan one model (`model`: its name, or its folder in a local repository); `every_version` ignores the
    version policy (an explicit load)."""
    listing = as_listing(repo)
    name = model.name if isinstance(model, Path) else model
    listing.refresh(name)
    return _scan(listing, name, every_version)


def _scan(listing: RepositoryListing, name: str, every_version: bool) -> ModelSource:
    directory = listing.root / name
    where = f"{listing.describe().rstrip('/')}/{name}"
    if not listing.has_model(name):
        return ModelSource(name, directory, ModelConfig(), error=f"{where}: no such model folder")
    if not _MODEL_NAME.match(name):
        return ModelSource(name, directory, ModelConfig(), error=f"{where}: not a valid model name")
    try:
        config = load_model_config(directory / CONFIG_FILE)
    except ConfigError as exc:
        return ModelSource(name, directory, ModelConfig(), error=str(exc))
    source = ModelSource(name, directory, config)
    numbers = listing.version_numbers(name)
    if config.runtime.kind == "remote":
        candidates = numbers or list(config.runtime.versions or [1])
        chosen = sorted(candidates) if every_version else config.version_policy.select(candidates)
        source.versions = [VersionSource(str(v), None) for v in chosen]
        return source
    if not numbers:
        source.error = f"{where}: no version folders (expected {where}/1/{config.runtime.filename})"
        return source
    for number in sorted(numbers) if every_version else config.version_policy.select(numbers):
        try:
            artifact, remote = listing.artifact(name, number, config.runtime.filename)
        except ConfigError as exc:
            source.error = str(exc)
            continue
        source.versions.append(VersionSource(str(number), artifact, remote))
    return source
