"""Syncing the model repository: new versions loaded and removed ones unloaded, as each model's
`version_policy` selects, local or on object storage.

A sync is the leader's action (a poll every `repository_poll_s`, `POST /admin/repository/sync`, `sluice
repo sync`): it reads the listing, decides (`plan_sync`, pure), fetches the new versions' files into the
cache before it takes the control plane's lock (a download does not hold up rollouts), then loads and
unloads through the control plane like an admin would, so each change is persisted and audited (actor
`repository-sync`) and every replica follows it. What a version policy selects is loaded: a version
unloaded by hand comes back at the next sync if its model's policy still selects it (narrow the policy,
or remove its files, to keep it out). A version the policy or a rollout still uses, or a model's last
ready version, is kept and the reason reported. A listing that cannot be read changes nothing: the
versions serving keep serving, the error is counted, logged and shown until a sync succeeds.

The periodic sync does not load a version of a local repository while its files are still changing: a copy into
the folder takes a while, and a poll that reads the half file loads it, fails, and shows the version FAILED until
the next poll (Triton asks for atomic moves for the same reason; people use `cp`). A version waits until its files
have not changed for `settle_s`: by their latest modification time on the sync's clock, or by how long the polls
have seen them unchanged (a time ahead of the clock, copied with its times kept, never looks old). The report says
which wait and why (`settling`). A sync someone asked for loads at once: they ran it because the copy is done. An
object store needs no wait: an object appears whole.

A version the sync loads is handed to the delivery controller (`gateway.control.delivery`), which takes it
through the model's `delivery` policy (none: loaded only, and served as the newest; shadow; rollout); the
report says what it did with each (`delivered`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.control.delivery import DeliveryController
from gateway.control.plane import ControlPlane
from gateway.errors import Conflict, ControlPlaneUnavailable, RepositoryUnavailable, SluiceError
from gateway.serving.model_supply import LIVE
from gateway.serving.registry import VersionState
from gateway.serving.repository import ModelSource, VersionSource, scan_repository

log = logging.getLogger(__name__)

SYNC_ACTOR = "repository-sync"


@dataclass(frozen=True)
class SyncPlan:
    load: tuple[tuple[str, str], ...] = ()
    """(model, version) the policy selects that are not loaded (new, failed before, or unloaded)."""
    unload: tuple[tuple[str, str], ...] = ()
    """(model, version) loaded that left the repository or the policy's selection."""
    new_models: tuple[str, ...] = ()
    """Models in the repository the gateway does not serve yet (they are served after a restart)."""


def plan_sync(sources: list[ModelSource], served: Mapping[str, Mapping[str, VersionState]]) -> SyncPlan:
    """What a sync does, from the scanned repository (versions already selected by each model's policy) and
    the state of every version served now. A model whose scan failed is left as it is."""
    load: list[tuple[str, str]] = []
    unload: list[tuple[str, str]] = []
    new_models: list[str] = []
    scanned = {s.name: s for s in sources}
    for source in sources:
        states = served.get(source.name)
        if states is None:
            if not source.error:
                new_models.append(source.name)
            continue
        if source.error and not source.versions:
            continue
        wanted = {v.version for v in source.versions}
        load += [(source.name, v.version) for v in source.versions if states.get(v.version) not in LIVE]
        unload += [(source.name, v) for v, state in sorted(states.items()) if v not in wanted and state in LIVE]
    for model, states in served.items():
        if model not in scanned:  # the whole model left the repository
            unload += [(model, v) for v, state in sorted(states.items()) if state in LIVE]
    return SyncPlan(tuple(load), tuple(unload), tuple(new_models))


@dataclass(frozen=True)
class FileSeen:
    """A local version's files as a poll saw them: their total size and their latest change (epoch seconds)."""

    size: int
    mtime: float


def settle_wait(seen: FileSeen, before: FileSeen | None, since: float | None, now: float, settle_s: float) -> float:
    """Seconds the periodic sync still waits before loading a version whose files are `seen` now; `before`: what an
    earlier poll saw of them, unchanged since `since` (the clock's time when it first saw them so). 0: load it now.

    Files are settled once they have not changed for `settle_s`: by their modification time, or, where that time is
    ahead of the clock (copied with its times kept from a machine whose clock is ahead: it would never look old), by
    how long the polls have seen them unchanged. Either is enough."""
    if settle_s <= 0:
        return 0.0
    unchanged_for = now - since if before == seen and since is not None else 0.0
    quiet = max(now - seen.mtime, unchanged_for)
    return 0.0 if quiet >= settle_s else settle_s - quiet


def look(folder: Path) -> FileSeen | None:
    """The version folder's files as they stand (the model and any external data beside it, and the folder itself,
    which changes as files are added); None when it cannot be read (the load will say why)."""
    try:
        with os.scandir(folder) as entries:
            files = [entry.stat() for entry in entries if entry.is_file()]
        own = folder.stat()
    except OSError:
        return None
    return FileSeen(sum(f.st_size for f in files), max([own.st_mtime, *(f.st_mtime for f in files)]))


@dataclass
class SyncReport:
    at: float
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    new_models: list[str] = field(default_factory=list)
    delivered: dict[str, str] = field(default_factory=dict)
    """What the delivery policy did with each version loaded (started, waiting, or why not)."""
    settling: dict[str, str] = field(default_factory=dict)
    """Versions the periodic sync waits for, their files still changing, and why."""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "ok": self.error is None,
            "error": self.error,
            "loaded": self.loaded,
            "unloaded": self.unloaded,
            "failed": self.failed,
            "kept": self.kept,
            "new_models": self.new_models,
            "delivered": self.delivered,
            "settling": self.settling,
        }


class RepositorySync:
    def __init__(
        self,
        control: ControlPlane,
        *,
        delivery: DeliveryController | None = None,
        prefetch: Callable[[ModelSource, VersionSource], Any] | None = None,
        on_error: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        settle_s: float = 2.0,
    ) -> None:
        """`prefetch(source, version)`: brings a version's file into the cache (blocking; run in a thread).
        `settle_s`: how long a local version's files must stand unchanged before the periodic sync loads it (0:
        at once); `clock` must tell the time the files' modification times are in."""
        self.control = control
        self.delivery = delivery
        self._prefetch = prefetch
        self._on_error = on_error
        self._clock = clock
        self.settle_s = settle_s
        self._running = asyncio.Lock()
        self._seen: dict[tuple[str, str], tuple[FileSeen, float]] = {}
        """What the last poll saw of each version it waited for, and since when (the clock) it had seen it so."""
        self.last: SyncReport | None = None

    async def poll(self) -> None:
        """The periodic sync: only where the control plane runs; an unreadable repository is reported, not raised."""
        if not self.control.active:
            return
        with contextlib.suppress(RepositoryUnavailable, ControlPlaneUnavailable):  # counted and logged by run()
            await self.run(SYNC_ACTOR, settle=True)

    async def run(self, actor: str, *, settle: bool = False) -> SyncReport:
        """Sync now; `settle`: leave a local version whose files are still changing for a later sync (the poll's)."""
        if not self.control.active:
            raise ControlPlaneUnavailable("this replica does not lead the control plane now; retry")
        async with self._running:
            report = SyncReport(at=self._clock())
            registry = self.control.registry
            try:
                sources = await asyncio.to_thread(scan_repository, registry.listing)
            except Exception as exc:
                report.error = str(exc)
                self.last = report
                if self._on_error is not None:
                    self._on_error()
                log.error("repository sync: %s (nothing changed; the versions serving keep serving)", exc)
                raise RepositoryUnavailable(f"repository sync: {exc}") from None
            served = {m: {v: s.state for v, s in model.versions.items()} for m, model in registry.models.items()}
            plan = plan_sync(sources, served)
            report.new_models = list(plan.new_models)
            by_name = {s.name: s for s in sources}
            waited = self._seen
            if settle:  # a sync someone asked for leaves what the polls saw to the next poll
                self._seen = {}
            for model, version in plan.load:
                if settle:
                    why = await self._unsettled(by_name[model], version, waited.get((model, version)))
                    if why is not None:
                        report.settling[f"{model}/{version}"] = why
                        continue
                await self._fetch(by_name[model], version)
                policy = by_name[model].config.delivery
                try:
                    if self.delivery is not None:
                        await self.delivery.prepare(model, version, policy)
                    await self.control.load_version(actor, model, version)
                    report.loaded.append(f"{model}/{version}")
                    if self.delivery is not None:
                        report.delivered[f"{model}/{version}"] = await self.delivery.offer(model, version, policy)
                except SluiceError as exc:
                    report.failed[f"{model}/{version}"] = str(exc)
            for model, version in plan.unload:
                try:
                    await self.control.unload_version(actor, model, version)
                    report.unloaded.append(f"{model}/{version}")
                except Conflict as exc:
                    report.kept[f"{model}/{version}"] = str(exc)
                except SluiceError as exc:
                    report.failed[f"{model}/{version}"] = str(exc)
            for model in plan.new_models:
                log.warning("repository sync: new model %s is served after a restart", model)
            if report.loaded or report.unloaded or report.failed or report.settling:
                log.info("repository sync", extra=report.to_json())
            self.last = report
            return report

    async def _unsettled(self, source: ModelSource, version: str, before: tuple[FileSeen, float] | None) -> str | None:
        """Why the poll leaves a local version for later (its files still changing), or None to load it now."""
        vs = _version_source(source, version)
        if self.settle_s <= 0 or vs is None or vs.remote is not None or vs.artifact is None:
            return None
        folder = vs.artifact.parent
        seen = await asyncio.to_thread(look, folder)
        if seen is None:
            return None
        now = self._clock()
        last, since = before if before is not None else (None, None)
        if not settle_wait(seen, last, since, now, self.settle_s):
            return None
        self._seen[(source.name, version)] = (seen, since if last == seen and since is not None else now)
        age = now - seen.mtime
        changed = f"changed {age:.1f} s ago" if age >= 0 else "dated ahead of this clock"
        return (
            f"its files in {folder} are still being written ({vs.artifact.name}; {changed}): loaded once they "
            f"have not changed for {self.settle_s:g} s"
        )

    async def _fetch(self, source: ModelSource, version: str) -> None:
        """Bring the version's file into the cache before the load takes the control plane's lock; a failure
        here is left to the load, which retries and records it on the version."""
        vs = _version_source(source, version)
        if self._prefetch is None or vs is None or vs.remote is None:
            return
        try:
            await asyncio.to_thread(self._prefetch, source, vs)
        except Exception as exc:
            log.debug("prefetch of %s/%s failed: %s", source.name, version, exc)


def _version_source(source: ModelSource, version: str) -> VersionSource | None:
    """The scanned version of the model that `version` names (the plan names versions by their text)."""
    return next((vs for vs in source.versions if vs.version == version), None)
