"""Triton's model repository extension: the index of models and versions, and the load/unload seam.

The index is read from this replica's registry, which follows the control plane's desired states: every
model of the repository, every version the registry knows, in Triton's states (READY, LOADING, UNLOADING,
UNAVAILABLE with the reason). A model that could not be read at all (a bad config.yaml, no version
folders) is listed once, without a version, UNAVAILABLE with its error.

Load and unload change what serves, so they go through the control plane with an admin token; the
adapters call them through `RepositoryActions`, which the composition root provides (serving never
imports the control plane).
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.serving.registry import ModelRegistry, ServedVersion, VersionState

_STATES = {
    VersionState.READY: "READY",
    VersionState.LOADING: "LOADING",
    VersionState.UNLOADING: "UNLOADING",
    VersionState.UNRESPONSIVE: "UNAVAILABLE",
    VersionState.FAILED: "UNAVAILABLE",
    VersionState.UNLOADED: "UNAVAILABLE",
}


def _reason(served: ServedVersion) -> str:
    if served.state is VersionState.UNLOADED:
        return "unloaded"
    if served.state in (VersionState.FAILED, VersionState.UNRESPONSIVE):
        return served.error or served.state.value.lower()
    return ""


def repository_index(registry: ModelRegistry, ready_only: bool = False) -> list[dict[str, str]]:
    """Triton's index: one entry a version (`ready_only`: only the READY ones), models by name, versions by number."""
    entries: list[dict[str, str]] = []
    for name in sorted(registry.models):
        model = registry.models[name]
        if not model.versions and not ready_only:
            entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": model.error or ""})
        for version in sorted(model.versions, key=lambda v: (len(v), v)):
            served = model.versions[version]
            if ready_only and not served.ready:
                continue
            entries.append(
                {"name": name, "version": version, "state": _STATES[served.state], "reason": _reason(served)}
            )
    return entries


class RepositoryActions(Protocol):
    """Load and unload a model as Triton's repository API does, as the holder of `authorization` (the raw
    `Authorization` header or gRPC metadata value). Raise `Unauthorized`/`Forbidden` for a missing or wrong
    admin token, with nothing changed; the other domain errors as the control plane raises them."""

    async def load(self, authorization: str | None, model: str, parameters: dict[str, Any]) -> None: ...

    async def unload(self, authorization: str | None, model: str, parameters: dict[str, Any]) -> None: ...
