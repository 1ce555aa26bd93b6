"""A replica follows the control plane: policies into its view, versions' desired states into its registry.

The control plane raises one counter in the state store (the control revision) with every change
it persists. Each replica polls that counter, a single indexed read, every `interval_s` (a fraction
of a second); when it moved, the replica reloads the policies (each with the revision that wrote it)
and brings its registry to the versions' desired states. So a change made through any replica is
in force on every replica within about one interval plus the reload, and the replica that leads
applies its own changes at once besides.

A desired state is acted on when it changes (and once at start-up), not on every reload: the
leader's own load or unload, under way while the revision moves for another reason, must not be
undone by a reload that still sees the old desired state. For the same reason the leader makes its
own version changes inside `changing()`: no sync runs meanwhile (one that read the desired states just
before a load would otherwise unload what was just loaded), and what the leader persisted is taken as
seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from gateway.serving.policy_view import PolicyView
from gateway.serving.registry import ModelRegistry
from gateway.serving.traffic import TrafficPolicy

log = logging.getLogger(__name__)


class ControlSource(Protocol):
    """What a replica reads of the control plane's state (the state store provides it)."""

    def control_revision(self) -> int: ...

    def policies_with_revisions(self) -> dict[str, tuple[TrafficPolicy, int]]: ...

    def versions(self, model: str | None = None) -> list[dict[str, Any]]: ...


class PolicyFollower:
    def __init__(
        self,
        source: ControlSource,
        view: PolicyView,
        registry: ModelRegistry,
        *,
        drain_timeout_s: float = 30.0,
        probe: Callable[[], Awaitable[int | None]] | None = None,
    ) -> None:
        """`probe`: knows the control revision on the event loop without waiting, or answers None, and then the
        source is asked in a worker thread (`storage.revision_probe`: SQLite's file is read in microseconds,
        PostgreSQL's notifications are taken off a listening connection)."""
        self._source = source
        self._probe = probe
        self._view = view
        self._registry = registry
        self._drain_timeout_s = drain_timeout_s
        self._revision = -1
        self._desired: dict[tuple[str, str], str] = {}
        self._lock = asyncio.Lock()

    @property
    def revision(self) -> int:
        """The control revision this replica last brought itself to (-1 before the first sync)."""
        return self._revision

    @contextlib.asynccontextmanager
    async def changing(self) -> AsyncIterator[Callable[[str, str, str], None]]:
        """Hold off syncs while the leader loads or unloads versions itself; it calls the function it is given
        with (model, version, desired) for each desired state it persisted."""
        async with self._lock:
            yield self._seen

    def _seen(self, model: str, version: str, desired: str) -> None:
        self._desired[(model, version)] = desired

    async def sync(self) -> None:
        """Reload if the control revision moved. Safe to call concurrently."""
        await self.sync_changed()

    async def sync_changed(self) -> bool:
        """`sync`, and say whether the revision had moved."""
        async with self._lock:
            revision = await self._probe() if self._probe is not None else None
            if revision is None:
                revision = await asyncio.to_thread(self._source.control_revision)
            if revision == self._revision:
                return False
            policies = await asyncio.to_thread(self._source.policies_with_revisions)
            versions = await asyncio.to_thread(self._source.versions)
            for model, (policy, policy_revision) in policies.items():
                if model in self._registry.models:
                    self._view.apply(model, policy, policy_revision)
            await self._reconcile(versions)
            self._revision = revision
            return True

    async def _reconcile(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            model, version, desired = row["model"], row["version"], row["desired"]
            key = (model, version)
            if self._desired.get(key) == desired or model not in self._registry.models:
                continue
            self._desired[key] = desired
            served = self._registry.models[model].versions.get(version)
            try:
                if desired == "unloaded" and served is not None and served.ready:
                    await self._registry.unload_version(model, version, self._drain_timeout_s)
                elif desired == "loaded" and (served is None or not served.ready):
                    await self._registry.load_version(model, version)
            except Exception as exc:
                log.error("cannot bring %s version %s to %s: %s", model, version, desired, exc)
            self._view.changed(model)
