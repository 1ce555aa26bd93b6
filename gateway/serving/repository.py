"""Scan a model repository laid out as Triton's: `<repo>/<model>/<version>/model.onnx`.

Scanning never raises for one bad model: the problem is recorded on that model (naming the
file) so the others still serve and the broken one shows as not ready.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from gateway.serving.model_config import ConfigError, ModelConfig, load_model_config

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CONFIG_FILE = "config.yaml"


@dataclass
class VersionSource:
    version: str
    artifact: Path | None
    """The ONNX file; None for a remote runtime."""


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


def scan_repository(repo: Path) -> list[ModelSource]:
    if not repo.is_dir():
        raise FileNotFoundError(f"model repository {repo} is not a directory")
    models: list[ModelSource] = []
    for directory in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        models.append(scan_model(repo, directory))
    return models


def scan_model(repo: Path, directory: Path, every_version: bool = False) -> ModelSource:
    """Scan one model folder; `every_version` ignores the version policy (an explicit load)."""
    name = directory.name
    if not directory.is_dir():
        return ModelSource(name, directory, ModelConfig(), error=f"{directory}: no such model folder")
    if not _MODEL_NAME.match(name):
        return ModelSource(name, directory, ModelConfig(), error=f"{directory}: not a valid model name")
    try:
        config = load_model_config(directory / CONFIG_FILE)
    except ConfigError as exc:
        return ModelSource(name, directory, ModelConfig(), error=str(exc))
    source = ModelSource(name, directory, config)
    numbers = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    if config.runtime.kind == "remote":
        candidates = numbers or list(config.runtime.versions or [1])
        chosen = sorted(candidates) if every_version else config.version_policy.select(candidates)
        source.versions = [VersionSource(str(v), None) for v in chosen]
        return source
    if not numbers:
        source.error = f"{directory}: no version folders (expected {directory}/1/{config.runtime.filename})"
        return source
    for number in sorted(numbers) if every_version else config.version_policy.select(numbers):
        artifact = directory / str(number) / config.runtime.filename
        try:
            artifact = confined(repo, artifact)
        except ConfigError as exc:
            source.error = str(exc)
            continue
        source.versions.append(VersionSource(str(number), artifact))
    return source
