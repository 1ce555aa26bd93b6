"""The control plane: every change to what serves — traffic policies, loaded versions, rollouts.

It runs in one process of a deployment at a time: the holder of the leader lease (`leader`), which
`start`s it when elected and `stop`s it when the lease is lost. Each change is validated first (a
bad request changes nothing), persisted with its audit event in one fenced transaction (a stale
leader's write is refused, and nothing half-made is left), then applied to this process's policy
view; the other replicas pick it up from the store's control revision. Rollouts advance on
`tick()`, driven by an injectable clock, so tests run a whole rollout in seconds; the decisions
themselves are pure (`rollout_checks`, `rollout_engine`).

A rollout window is the traffic its step's policy routed: each replica tags every request with the
revision of the policy that routed it and publishes window summaries; the analysis takes the
canary's and the stable's rows from the window's revision on, in the same transaction that records
its verdict. Store calls run in a worker thread; nothing here is on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from datetime import datetime, timezone
from typing import Any

from gateway.control import rollout_engine
from gateway.control.rollout_checks import check_problems, evaluate, next_baselines
from gateway.control.rollout_engine import Transition
from gateway.control.rollout_model import CheckResult, Phase, RolloutSpec, RolloutState, VersionWindow, Window
from gateway.control.webhooks import WebhookSender
from gateway.errors import (
    Conflict,
    ControlPlaneUnavailable,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    StoreUnavailable,
)
from gateway.observability.metrics import ROLLOUT_PHASES, GatewayMetrics
from gateway.serving.follower import PolicyFollower
from gateway.serving.policy_view import PolicyView
from gateway.serving.registry import ModelRegistry, ServedModel, VersionState
from gateway.serving.repository import scan_model
from gateway.serving.router import newest_ready, policy_weights
from gateway.serving.traffic import TrafficPolicy
from gateway.storage.control_state import AuditEvent
from gateway.storage.store import Store
from gateway.tasks import cancel_and_wait, tick_forever
from runtimes.base import RuntimeInfo

log = logging.getLogger(__name__)

ROLLOUT_ACTOR = "rollout-controller"
SHADOW_EVIDENCE_S = 86_400.0
"""How far back a canary's shadow comparisons count as evidence when its rollout starts."""


class ControlPlane:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: GatewayMetrics,
        store: Store,
        view: PolicyView,
        *,
        flush_windows: Callable[[], Awaitable[None]] | None = None,
        webhooks: WebhookSender | None = None,
        clock: Callable[[], float] = time.time,
        tick_s: float = 1.0,
        drain_timeout_s: float = 30.0,
        follower: PolicyFollower | None = None,
    ) -> None:
        """`follower`: this replica's; the plane's own version changes hold its syncs off (`changing`)."""
        self.registry = registry
        self._follower = follower
        self.metrics = metrics
        self.store = store
        self.webhooks = webhooks
        self.clock = clock
        self.tick_s = tick_s
        self.drain_timeout_s = drain_timeout_s
        self.view = view
        self._flush_windows = flush_windows
        """Publishes this process's own window statistics before an analysis takes them (no lag for it)."""
        self._policies: dict[str, TrafficPolicy] = {}
        self._rollouts: dict[str, RolloutState] = {}
        self.active = False
        """True while this process leads: only then does it take changes."""
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.monitor_figures: Callable[[str, str, float], dict[str, Any]] | None = None
        """(model, version, since clock) -> VersionWindow fields from the monitors (drift, accuracy); set by
        the MonitorService, read by the "drift" and "accuracy" rollout checks."""

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, run_loop: bool = True) -> None:
        """Take over as the control plane: policies and rollouts come back where they stood."""
        stored = await asyncio.to_thread(self.store.policies_with_revisions)
        self._policies = {m: p for m, (p, _) in stored.items() if m in self.registry.models}
        for model, (policy, revision) in stored.items():
            if model in self.registry.models:
                self.view.apply(model, policy, revision)
        self._rollouts = {}
        for state in await asyncio.to_thread(self.store.active_rollouts):
            if state.model in self.registry.models:
                self._rollouts[state.model] = state
                log.info("resuming rollout of %s version %s at step %d", state.model, state.spec.canary, state.step)
        for model in self.registry.models:
            self._publish(model)
        try:
            await asyncio.to_thread(self._audit_artifacts)
        except Exception as exc:  # the digests are also in the metadata; leading matters more
            log.warning("could not audit the loaded artifacts' digests: %s", exc)
        self.active = True
        if run_loop:
            self._task = asyncio.get_running_loop().create_task(
                tick_forever(self.tick, self.tick_s, "rollout controller"), name="rollout-controller"
            )

    async def stop(self) -> None:
        """Stop leading (the lease was lost, or shutdown): no more ticks, no more changes taken."""
        self.active = False
        await cancel_and_wait(self._task)
        self._task = None

    async def aclose(self) -> None:
        await self.stop()
        if self.webhooks is not None:
            await self.webhooks.aclose()

    async def flush_windows(self) -> None:
        """Publish this process's own window statistics now, so a reader of the store sees them without lag."""
        if self._flush_windows is not None:
            await self._flush_windows()

    # -- reads ---------------------------------------------------------------------------

    def policy(self, model: str) -> TrafficPolicy:
        return self._policies.get(model, TrafficPolicy())

    def rollout(self, model: str) -> RolloutState | None:
        return self._rollouts.get(model)

    # -- rollouts -----------------------------------------------------------------------

    async def tick(self) -> None:
        """Analyse every rollout whose window has ended; cheap when none is due."""
        now = self.clock()
        for model, state in list(self._rollouts.items()):
            if rollout_engine.due(state, now):
                async with self._lock:
                    current = self._rollouts.get(model)
                    if current is not None and rollout_engine.due(current, now):
                        await self._analyse(current, now)

    async def _analyse(self, state: RolloutState, now: float) -> None:
        if self._flush_windows is not None:
            await self._flush_windows()
        figures: dict[str, dict[str, Any]] = {}
        if self.monitor_figures is not None:
            for version in (state.spec.canary, state.stable):
                figures[version] = self.monitor_figures(state.model, version, state.started_at)
        old_policy = self.policy(state.model)
        new, policy, revision, results, transitions = await asyncio.to_thread(
            self._analyse_in_store, state, now, figures, old_policy
        )
        for r in results:
            self.metrics.rollout_checks.labels(state.model, r.check, r.verdict.value).inc()
        detail = [{"kind": t.kind, "from": t.from_weight, "to": t.to_weight, "detail": t.detail} for t in transitions]
        self._apply_rollout(ROLLOUT_ACTOR, "rollout.analysis", state, new, policy, revision, {"transitions": detail})

    def _analyse_in_store(
        self, state: RolloutState, now: float, figures: dict[str, dict[str, Any]], old_policy: TrafficPolicy
    ) -> tuple[RolloutState, TrafficPolicy, int, tuple[CheckResult, ...], list[Transition]]:
        """Take the window, judge it and record the verdict in one fenced transaction: the window's rows are
        marked taken only if the verdict is stored too (a new leader judges them otherwise)."""
        with self.store.change():
            canary, stable = (
                VersionWindow.from_summary(self.store.take_windows(state.model, v, min_revision=state.revision))
                for v in (state.spec.canary, state.stable)
            )
            # A canary is never a shadow at the same time: judge agreement on its shadow run before the rollout.
            evidence = state.shadow_evidence
            if canary.shadow_compared == 0 and evidence is not None and evidence.shadow_compared:
                canary = replace(canary, shadow_compared=evidence.shadow_compared, shadow_agreed=evidence.shadow_agreed)
            canary = replace(canary, **figures.get(state.spec.canary, {}))
            stable = replace(stable, **figures.get(state.stable, {}))
            results = evaluate(Window(canary=canary, stable=stable), state.spec.checks, state.baselines)
            new, transitions = rollout_engine.advance(state, results, now)
            new = replace(new, baselines=next_baselines(state.baselines, stable, state.spec.checks))
            detail = [
                {"kind": t.kind, "from": t.from_weight, "to": t.to_weight, "detail": t.detail} for t in transitions
            ]
            new, policy, revision = self._persist_rollout(
                ROLLOUT_ACTOR, "rollout.analysis", state, new, old_policy, {"transitions": detail}
            )
        return new, policy, revision, results, transitions

    async def start_rollout(self, actor: str, model: str, spec: RolloutSpec) -> RolloutState:
        async with self._lock:
            self._leading()
            served_model = self._model(model)
            problems = spec.problems() + check_problems(spec)
            if problems:
                raise InvalidInput(f"rollout for model '{model}': {'; '.join(problems)}")
            active = self._rollouts.get(model)
            if active is not None:
                raise Conflict(
                    f"model '{model}' already has a rollout of version {active.spec.canary} ({active.phase.value}); "
                    "abort it first"
                )
            self._require_ready(served_model, spec.canary)
            policy = self.policy(model)
            stable = policy.stable or getattr(newest_ready(served_model, excluding=spec.canary), "version", None)
            if stable is None or stable == spec.canary:
                raise Conflict(f"model '{model}' has no stable version to compare canary {spec.canary} against")
            self._require_ready(served_model, stable)
            # Traffic before the rollout does not count in its first window (that window starts at the
            # revision the start writes), but what the canary did as a shadow before it is the evidence
            # the shadow_agreement check reads.
            state = rollout_engine.start(model, stable, spec, self.clock())
            if self._flush_windows is not None:
                await self._flush_windows()  # this process's own shadow comparisons count too
            return await self._commit_rollout(actor, "rollout.start", None, state, {}, take_evidence=True)

    async def pause_rollout(self, actor: str, model: str) -> RolloutState:
        return await self._rollout_op(actor, model, "rollout.pause", rollout_engine.pause)

    async def resume_rollout(self, actor: str, model: str) -> RolloutState:
        return await self._rollout_op(actor, model, "rollout.resume", lambda s: rollout_engine.resume(s, self.clock()))

    async def abort_rollout(self, actor: str, model: str) -> RolloutState:
        return await self._rollout_op(
            actor, model, "rollout.abort", lambda s: rollout_engine.abort(s, f"aborted by {actor}")
        )

    async def _rollout_op(
        self, actor: str, model: str, action: str, op: Callable[[RolloutState], RolloutState]
    ) -> RolloutState:
        async with self._lock:
            self._leading()
            self._model(model)
            return await self._rollout_op_locked(actor, model, action, op)

    async def _rollout_op_locked(
        self, actor: str, model: str, action: str, op: Callable[[RolloutState], RolloutState]
    ) -> RolloutState:
        state = self._rollouts.get(model)
        if state is None:
            raise Conflict(f"model '{model}' has no active rollout")
        return await self._commit_rollout(actor, action, state, op(state), {})

    async def _commit_rollout(
        self,
        actor: str,
        action: str,
        before: RolloutState | None,
        new: RolloutState,
        extra: dict[str, Any],
        *,
        take_evidence: bool = False,
    ) -> RolloutState:
        """Make the policy follow the rollout: persist both and the audit event, then apply, publish, notify."""
        old_policy = self.policy(new.model)

        def persist() -> tuple[RolloutState, TrafficPolicy, int]:
            with self.store.change():
                state = new
                if take_evidence:
                    since = datetime.fromtimestamp(time.time() - SHADOW_EVIDENCE_S, timezone.utc)
                    shadowed = self.store.take_windows(new.model, new.spec.canary, min_revision=0, since=since)
                    state = replace(
                        state,
                        shadow_evidence=VersionWindow(
                            shadow_compared=shadowed.shadow_compared, shadow_agreed=shadowed.shadow_agreed
                        ),
                    )
                return self._persist_rollout(actor, action, before, state, old_policy, extra)

        # Persist first: if the store fails (or this process no longer leads), the live state has not moved.
        committed, policy, revision = await asyncio.to_thread(persist)
        self._apply_rollout(actor, action, before, committed, policy, revision, extra)
        return committed

    def _persist_rollout(
        self,
        actor: str,
        action: str,
        before: RolloutState | None,
        new: RolloutState,
        old_policy: TrafficPolicy,
        extra: dict[str, Any],
    ) -> tuple[RolloutState, TrafficPolicy, int]:
        """In the caller's `store.change()`: the policy the rollout implies under a new revision (which opens
        the next window), the rollout state carrying that revision, and the audit event."""
        if new.phase is Phase.PROMOTED:
            policy = replace(old_policy, stable=new.spec.canary, canary=None, canary_weight=0.0)
        elif new.phase.finished:
            policy = replace(old_policy, stable=new.stable, canary=None, canary_weight=0.0)
        else:
            policy = replace(old_policy, stable=new.stable, canary=new.spec.canary, canary_weight=new.weight)
        revision = self.store.put_policy(new.model, policy)
        new = replace(new, revision=revision)
        self.store.save_rollout(new)
        after = {"rollout": new.to_json(), "policy": asdict(policy), **extra}
        prior = {"rollout": before.to_json() if before else None, "policy": asdict(old_policy)}
        self.store.audit(actor, action, new.model, prior, after)
        return new, policy, revision

    def _apply_rollout(
        self,
        actor: str,
        action: str,
        before: RolloutState | None,
        new: RolloutState,
        policy: TrafficPolicy,
        revision: int,
        extra: dict[str, Any],
    ) -> None:
        model = new.model
        self._policies[model] = policy
        self.view.apply(model, policy, revision)
        if new.phase.finished:
            self._rollouts.pop(model, None)
        else:
            self._rollouts[model] = new
        if before is None or before.phase is not new.phase:
            if new.phase is Phase.PROMOTED:
                self.metrics.promotions.labels(model).inc()
            elif new.phase is Phase.ROLLED_BACK:
                self.metrics.rollbacks.labels(model, "analysis" if actor == ROLLOUT_ACTOR else "manual").inc()
        self._publish(model, new)
        if self.webhooks is not None and (before is None or before.to_json() != new.to_json()):
            self.webhooks.deliver_in_background(action, {"rollout": new.to_json(), **extra})

    # -- traffic policy -----------------------------------------------------------------

    async def set_policy(self, actor: str, model: str, policy: TrafficPolicy) -> TrafficPolicy:
        return await self.update_policy(actor, model, lambda _: policy)

    async def update_policy(
        self, actor: str, model: str, change: Callable[[TrafficPolicy], TrafficPolicy]
    ) -> TrafficPolicy:
        """Read, change and write a policy atomically: concurrent edits cannot overwrite each other."""
        async with self._lock:
            self._leading()
            served_model = self._model(model)
            old = self.policy(model)
            policy = change(old)
            problems = policy.problems()
            if problems:
                raise InvalidInput(f"traffic policy for model '{model}': {'; '.join(problems)}")
            for version in (policy.stable, policy.canary, *policy.shadows):
                if version is not None:
                    self._require_ready(served_model, version)
            active = self._rollouts.get(model)
            owned = ("canary", "canary_weight", "stable")
            if active is not None and any(getattr(policy, f) != getattr(old, f) for f in owned):
                raise Conflict(
                    f"model '{model}' has a rollout of version {active.spec.canary} in progress: it owns the stable, "
                    "canary and weight; pause or abort it first (shadows and sticky keys may change)"
                )
            await self._set_policy(actor, "policy.set", model, old, policy)
            return policy

    async def _set_policy(self, actor: str, action: str, model: str, old: TrafficPolicy, policy: TrafficPolicy) -> None:
        """Persist the policy and its audit event (one fenced transaction), then route by it here."""

        def persist() -> int:
            with self.store.change():
                revision = self.store.put_policy(model, policy)
                self.store.audit(actor, action, model, asdict(old), asdict(policy))
                return revision

        # Persist first: if the store fails (or this process no longer leads), the live state has not moved.
        revision = await asyncio.to_thread(persist)
        self._policies[model] = policy
        self.view.apply(model, policy, revision)
        self._publish(model)

    async def promote(self, actor: str, model: str) -> TrafficPolicy:
        """Make the canary the stable version now (ends a rollout as promoted)."""
        async with self._lock:
            self._leading()
            self._model(model)
            if model in self._rollouts:
                await self._rollout_op_locked(actor, model, "rollout.promote", rollout_engine.manual_promote)
                return self.policy(model)
            policy = self.policy(model)
            if policy.canary is None:
                raise Conflict(f"model '{model}' has no canary to promote")
            new = replace(policy, stable=policy.canary, canary=None, canary_weight=0.0)
            await self._set_policy(actor, "policy.promote", model, policy, new)
        self.metrics.promotions.labels(model).inc()
        return new

    async def rollback(self, actor: str, model: str) -> TrafficPolicy:
        """Send all traffic back to the stable version now (ends a rollout as rolled back)."""
        async with self._lock:
            self._leading()
            self._model(model)
            if model in self._rollouts:
                await self._rollout_op_locked(
                    actor,
                    model,
                    "rollout.rollback",
                    lambda s: rollout_engine.manual_rollback(s, f"rolled back by {actor}"),
                )
                return self.policy(model)
            policy = self.policy(model)
            if policy.canary is None:
                raise Conflict(f"model '{model}' has no canary to roll back")
            new = replace(policy, canary=None, canary_weight=0.0)
            await self._set_policy(actor, "policy.rollback", model, policy, new)
        self.metrics.rollbacks.labels(model, "manual").inc()
        return new

    # -- versions -----------------------------------------------------------------------

    async def load_version(self, actor: str, model: str, version: str) -> dict[str, Any]:
        async with self._lock, self._changing_versions() as seen:
            self._leading()
            served_model = self._model(model)
            current = served_model.versions.get(version)
            if current is not None and current.ready:
                return self.version_view(model, version)  # already loaded: nothing changes, nothing to audit
            served = await self.registry.load_version(model, version)
            if not served.ready:
                raise ModelNotReady(f"cannot load {served.not_ready_reason()}")
            try:
                await asyncio.to_thread(self._persist_version, actor, "version.load", served.model, version, "loaded")
            except StoreUnavailable:
                # Not recorded, so not made: a restart or another replica would not load it either.
                await self.registry.unload_version(model, version, self.drain_timeout_s)
                raise
            seen(model, version, "loaded")
            self._publish(model)
            return self.version_view(model, version)

    async def unload_version(self, actor: str, model: str, version: str) -> dict[str, Any]:
        async with self._lock, self._changing_versions() as seen:
            self._leading()
            served_model = self._model(model)
            if version not in served_model.versions:
                raise ModelNotFound(f"model '{model}' has no version '{version}'")
            if served_model.versions[version].state is VersionState.UNLOADED:
                return self.version_view(model, version)  # already unloaded: nothing to audit
            roles = self._in_use(model, version)
            if roles:
                raise Conflict(
                    f"model '{model}' version '{version}' is in use as {', '.join(roles)}; change the policy first"
                )
            remaining = [v for v in served_model.ready_versions() if v.version != version]
            if not remaining:
                raise Conflict(f"model '{model}' version '{version}' is its last ready version")
            # Recorded first: if the store cannot take it, the version keeps serving.
            await asyncio.to_thread(self._persist_version, actor, "version.unload", model, version, "unloaded")
            seen(model, version, "unloaded")
            await self.registry.unload_version(model, version, self.drain_timeout_s)
            self._publish(model)
            return self.version_view(model, version)

    async def load_model(self, actor: str, model: str) -> list[dict[str, Any]]:
        """Triton's load of a whole model: every version its version policy selects in the repository now, each
        loaded (and audited) as `load_version` does; a version already loaded is left as it is."""
        self._leading()
        self._model(model)
        source = await asyncio.to_thread(scan_model, self.registry.repo, self.registry.repo / model)
        if not source.versions:
            raise ModelNotReady(f"cannot load model '{model}': {source.error or 'its version policy selects none'}")
        return [await self.load_version(actor, model, v.version) for v in source.versions]

    async def unload_model(self, actor: str, model: str) -> list[dict[str, Any]]:
        """Triton's unload of a whole model: every loaded version drained and unloaded, so the model answers
        503 until it is loaded again. Refused, with nothing changed, while the traffic policy or a rollout
        names one of its versions (change the policy first). Recorded before anything is unloaded."""
        async with self._lock, self._changing_versions() as seen:
            self._leading()
            served_model = self._model(model)
            loaded = [
                v
                for v in sorted(served_model.versions, key=_num)
                if served_model.versions[v].state in (VersionState.READY, VersionState.UNRESPONSIVE)
            ]
            for version in loaded:
                roles = self._in_use(model, version)
                if roles:
                    raise Conflict(
                        f"model '{model}' version '{version}' is in use as {', '.join(roles)}; change the policy first"
                    )
            if loaded:
                await asyncio.to_thread(self._persist_versions, actor, "version.unload", model, loaded, "unloaded")
            for version in loaded:
                seen(model, version, "unloaded")
                await self.registry.unload_version(model, version, self.drain_timeout_s)
            self._publish(model)
            return [self.version_view(model, v) for v in sorted(served_model.versions, key=_num)]

    def _changing_versions(self) -> contextlib.AbstractAsyncContextManager[Callable[[str, str, str], None]]:
        if self._follower is None:
            return contextlib.nullcontext(_ignore)
        return self._follower.changing()

    def _in_use(self, model: str, version: str) -> list[str]:
        """The roles the policy and the rollout give the version (a version in use is not unloaded)."""
        policy = self.policy(model)
        roles = [role for role, v in (("stable", policy.stable), ("canary", policy.canary)) if v == version] + (
            ["shadow"] if version in policy.shadows else []
        )
        rollout = self._rollouts.get(model)
        if rollout is not None and version in (rollout.stable, rollout.spec.canary):
            roles.append("rollout")
        return roles

    def _persist_version(self, actor: str, action: str, model: str, version: str, desired: str) -> None:
        self._persist_versions(actor, action, model, [version], desired)

    def _persist_versions(self, actor: str, action: str, model: str, versions: list[str], desired: str) -> None:
        """The versions' desired state and one audit event each, in one transaction."""
        with self.store.change():
            for version in versions:
                served = self.registry.get_version(model, version)
                runtime = served.config.runtime
                artifact = None if runtime.kind == "remote" else f"{model}/{version}/{runtime.filename}"
                self.store.put_version(
                    model,
                    version,
                    artifact=artifact,
                    runtime=runtime.kind,
                    batching=served.config.batching.model_dump(),
                    desired=desired,
                )
                state = VersionState.UNLOADED.value if desired == "unloaded" else served.state.value
                details = {"version": version, "state": state, "sha256": served.sha256}
                self.store.audit(actor, action, model, None, details)

    def _audit_artifacts(self) -> None:
        """One audit event per model at the start of a term: the SHA-256 of every version file loaded."""
        with self.store.change():
            for name, model in sorted(self.registry.models.items()):
                digests = {v: s.sha256 for v, s in sorted(model.versions.items()) if s.sha256 and s.runtime}
                if digests:
                    self.store.audit(self.ROLE, "version.artifacts", name, None, {"sha256": digests})

    ROLE = "control-plane"
    """The actor of the events the control plane writes on its own behalf (not a rollout's)."""

    # -- views --------------------------------------------------------------------------

    def version_view(self, model: str, version: str) -> dict[str, Any]:
        served = self.registry.get_version(model, version)
        policy = self.policy(model)
        roles = [r for r, v in (("stable", policy.stable), ("canary", policy.canary)) if v == version]
        if version in policy.shadows:
            roles.append("shadow")
        return {
            "version": version,
            "state": served.state.value,
            "error": served.error,
            "roles": roles,
            "weight": policy_weights(self._model(model), self.policy(model)).get(version, 0.0),
            "execution_provider": served.runtime.info.execution_provider if served.runtime else None,
            **_placement(served.runtime.info if served.runtime else None),
            "sha256": served.sha256,
            "max_batch_size": served.batching.max_batch_size,
        }

    def model_view(self, model: str) -> dict[str, Any]:
        served_model = self._model(model)
        rollout = self._rollouts.get(model)
        return {
            "name": model,
            "error": served_model.error,
            "versions": [self.version_view(model, v) for v in sorted(served_model.versions, key=_num)],
            "policy": asdict(self.policy(model)),
            "rollout": rollout.to_json() if rollout else None,
        }

    def models_view(self) -> list[dict[str, Any]]:
        return [self.model_view(m) for m in sorted(self.registry.models)]

    async def last_rollout(self, model: str) -> RolloutState | None:
        self._model(model)
        return self._rollouts.get(model) or await asyncio.to_thread(self.store.rollout, model)

    async def audit_events(self, model: str | None, limit: int, before_id: int | None) -> list[AuditEvent]:
        return await asyncio.to_thread(self.store.audit_events, model=model, limit=limit, before_id=before_id)

    # -- helpers ------------------------------------------------------------------------

    def _model(self, model: str) -> ServedModel:
        return self.registry.get_model(model)

    def _leading(self) -> None:
        """Changes are taken only while this process leads (others forward them to the leader)."""
        if not self.active:
            raise ControlPlaneUnavailable("this replica does not lead the control plane now; retry")

    def _require_ready(self, model: ServedModel, version: str) -> None:
        served = model.versions.get(version)
        if served is None:
            raise ModelNotFound(f"model '{model.name}' has no version '{version}'")
        if served.state is not VersionState.READY:
            raise Conflict(f"model '{model.name}' version '{version}' is not loaded ({served.state.value})")

    def _publish(self, model: str, rollout: RolloutState | None = None) -> None:
        """The rollout gauges (the traffic weights follow the policy view, in every replica)."""
        self.view.changed(model)
        rollout = rollout or self._rollouts.get(model)
        if rollout is not None:
            for phase in ROLLOUT_PHASES:
                self.metrics.rollout_phase.labels(model, rollout.spec.canary, phase).set(
                    1 if phase == rollout.phase.value else 0
                )
            self.metrics.rollout_step.labels(model).set(rollout.step)


def _num(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _placement(info: RuntimeInfo | None) -> dict[str, Any]:
    """Where a version's runtime runs: its placement (worker, device, or a Ray application), device and process;
    with the device placement every runtime process (device and pid) and the sessions each holds."""
    if info is None:
        return {"placement": None, "device": None, "device_pid": None, "devices": [], "instances": None}
    pid = info.parameters.get("device_pid")
    instances = info.parameters.get("instances", "")
    return {
        "placement": info.parameters.get("placement", "worker"),
        "device": info.device,
        "device_pid": int(pid) if pid else None,
        "devices": _devices(info),
        "instances": int(instances) if instances.isdigit() else None,
    }


def _devices(info: RuntimeInfo) -> list[dict[str, Any]]:
    """Each runtime process a version of the device placement runs in (several with `runtime.devices`)."""
    names = info.parameters.get("devices", info.parameters.get("device", "")).split(",")
    pids = info.parameters.get("device_pids", info.parameters.get("device_pid", "")).split(",")
    return [
        {"device": name, "pid": int(pid) if pid.isdigit() else None}
        for name, pid in zip(names, pids, strict=False)
        if name and info.parameters.get("placement") == "device"
    ]


def _ignore(model: str, version: str, desired: str) -> None:
    """No follower to tell (a plane without a replica beside it)."""
