"""The control plane: every change to what serves — traffic policies, loaded versions, rollouts.

Each change is validated first (a bad request changes nothing), applied to the live state
the router reads, persisted, and written to the audit log with the actor's name. Rollouts
advance on `tick()`, driven by an injectable clock, so tests run a whole rollout in seconds;
the decisions themselves are pure (`rollout_checks`, `rollout_engine`).

Hot path: `route()` reads an in-memory dict and a counter. Everything else runs off it, and
store calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from gateway.control import rollout_engine
from gateway.control.rollout_checks import check_problems, evaluate, with_baseline
from gateway.control.rollout_model import Phase, RolloutSpec, RolloutState, VersionWindow, Window
from gateway.control.webhooks import WebhookSender
from gateway.errors import Conflict, InvalidInput, ModelNotFound, ModelNotReady
from gateway.observability.metrics import ROLLOUT_PHASES, GatewayMetrics
from gateway.serving.registry import ModelRegistry, ServedModel, VersionState
from gateway.serving.request import InferRequest
from gateway.serving.router import Routed, newest_ready, route_request
from gateway.serving.traffic import TrafficPolicy
from gateway.serving.window_stats import WindowRecorder
from gateway.storage.control_state import AuditEvent
from gateway.storage.store import Store
from gateway.tasks import cancel_and_wait, tick_forever

log = logging.getLogger(__name__)

ROLLOUT_ACTOR = "rollout-controller"


class ControlPlane:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: GatewayMetrics,
        store: Store,
        *,
        webhooks: WebhookSender | None = None,
        clock: Callable[[], float] = time.time,
        tick_s: float = 1.0,
        drain_timeout_s: float = 30.0,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.store = store
        self.webhooks = webhooks
        self.clock = clock
        self.tick_s = tick_s
        self.drain_timeout_s = drain_timeout_s
        self.windows = WindowRecorder()
        self._policies: dict[str, TrafficPolicy] = {}
        self._sequence: dict[str, int] = {}
        self._rollouts: dict[str, RolloutState] = {}
        self._baselines: dict[str, VersionWindow] = {}
        self._shadow_evidence: dict[str, VersionWindow] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.monitor_figures: Callable[[str, str, float], dict[str, Any]] | None = None
        """(model, version, since clock) -> VersionWindow fields from the monitors (drift, accuracy); set by
        the MonitorService, read by the "drift" and "accuracy" rollout checks."""

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, run_loop: bool = True) -> None:
        """Bring persisted state back: desired versions, policies, rollouts where they stood."""
        await asyncio.to_thread(self.store.upgrade)
        for row in await asyncio.to_thread(self.store.versions):
            model, version, desired = row["model"], row["version"], row["desired"]
            if model not in self.registry.models:
                continue
            served = self.registry.models[model].versions.get(version)
            try:
                if desired == "unloaded" and served is not None and served.ready:
                    await self.registry.unload_version(model, version, self.drain_timeout_s)
                elif desired == "loaded" and (served is None or not served.ready):
                    await self.registry.load_version(model, version)
            except Exception as exc:
                log.error("cannot restore %s version %s to %s: %s", model, version, desired, exc)
        policies = await asyncio.to_thread(self.store.all_policies)
        self._policies = {m: p for m, p in policies.items() if m in self.registry.models}
        for state in await asyncio.to_thread(self.store.active_rollouts):
            if state.model in self.registry.models:
                self._rollouts[state.model] = state
                log.info("resuming rollout of %s version %s at step %d", state.model, state.spec.canary, state.step)
        for model in self.registry.models:
            self._publish(model)
        if run_loop:
            self._task = asyncio.get_running_loop().create_task(
                tick_forever(self.tick, self.tick_s, "rollout controller"), name="rollout-controller"
            )

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self.webhooks is not None:
            await self.webhooks.aclose()
        await asyncio.to_thread(self.store.close)

    # -- hot path -----------------------------------------------------------------------

    def route(self, model: ServedModel, request: InferRequest) -> Routed:
        n = self._sequence.get(model.name, 0)
        self._sequence[model.name] = n + 1
        return route_request(model, request, self._policies.get(model.name), n)

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
        window = Window(
            canary=self.windows.take(state.model, state.spec.canary),
            stable=self.windows.take(state.model, state.stable),
        )
        # At a 100% step the stable serves nothing: compare against its last window with traffic.
        if window.stable.requests:
            self._baselines[state.model] = window.stable
        window = with_baseline(window, self._baselines.get(state.model))
        # A canary is never a shadow at the same time: judge agreement on its shadow run before the rollout.
        evidence = self._shadow_evidence.get(state.model)
        if window.canary.shadow_compared == 0 and evidence is not None and evidence.shadow_compared:
            canary = replace(
                window.canary, shadow_compared=evidence.shadow_compared, shadow_agreed=evidence.shadow_agreed
            )
            window = replace(window, canary=canary)
        if self.monitor_figures is not None:
            canary = replace(window.canary, **self.monitor_figures(state.model, state.spec.canary, state.started_at))
            stable = replace(window.stable, **self.monitor_figures(state.model, state.stable, state.started_at))
            window = replace(window, canary=canary, stable=stable)
        results = evaluate(window, state.spec.checks)
        for r in results:
            self.metrics.rollout_checks.labels(state.model, r.check, r.verdict.value).inc()
        new, transitions = rollout_engine.advance(state, results, now)
        detail = [{"kind": t.kind, "from": t.from_weight, "to": t.to_weight, "detail": t.detail} for t in transitions]
        await self._commit_rollout(ROLLOUT_ACTOR, "rollout.analysis", state, new, {"transitions": detail})

    async def start_rollout(self, actor: str, model: str, spec: RolloutSpec) -> RolloutState:
        async with self._lock:
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
            # Traffic before the rollout must not count in its first window, but what the canary did
            # as a shadow before it is the evidence the shadow_agreement check reads.
            before = self.windows.take(model, spec.canary)
            self.windows.take(model, stable)
            self._shadow_evidence[model] = VersionWindow(
                shadow_compared=before.shadow_compared, shadow_agreed=before.shadow_agreed
            )
            state = rollout_engine.start(model, stable, spec, self.clock())
            await self._commit_rollout(actor, "rollout.start", None, state, {})
            return state

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
            self._model(model)
            return await self._rollout_op_locked(actor, model, action, op)

    async def _rollout_op_locked(
        self, actor: str, model: str, action: str, op: Callable[[RolloutState], RolloutState]
    ) -> RolloutState:
        state = self._rollouts.get(model)
        if state is None:
            raise Conflict(f"model '{model}' has no active rollout")
        new = op(state)
        await self._commit_rollout(actor, action, state, new, {})
        return new

    async def _commit_rollout(
        self, actor: str, action: str, before: RolloutState | None, new: RolloutState, extra: dict[str, Any]
    ) -> None:
        """Make the policy follow the rollout, persist both, audit, publish, notify."""
        model = new.model
        policy = self.policy(model)
        if new.phase is Phase.PROMOTED:
            policy = replace(policy, stable=new.spec.canary, canary=None, canary_weight=0.0)
        elif new.phase.finished:
            policy = replace(policy, stable=new.stable, canary=None, canary_weight=0.0)
        else:
            policy = replace(policy, stable=new.stable, canary=new.spec.canary, canary_weight=new.weight)
        old_policy = self.policy(model)
        # Persist first: if the store fails, the live state has not moved either.
        await asyncio.to_thread(self._persist_rollout, actor, action, before, new, old_policy, policy, extra)
        self._policies[model] = policy
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

    def _persist_rollout(
        self,
        actor: str,
        action: str,
        before: RolloutState | None,
        new: RolloutState,
        old_policy: TrafficPolicy,
        policy: TrafficPolicy,
        extra: dict[str, Any],
    ) -> None:
        self.store.save_rollout(new)
        self.store.put_policy(new.model, policy)
        after = {"rollout": new.to_json(), "policy": asdict(policy), **extra}
        prior = {"rollout": before.to_json() if before else None, "policy": asdict(old_policy)}
        self.store.audit(actor, action, new.model, prior, after)

    # -- traffic policy -----------------------------------------------------------------

    async def set_policy(self, actor: str, model: str, policy: TrafficPolicy) -> TrafficPolicy:
        return await self.update_policy(actor, model, lambda _: policy)

    async def update_policy(
        self, actor: str, model: str, change: Callable[[TrafficPolicy], TrafficPolicy]
    ) -> TrafficPolicy:
        """Read, change and write a policy atomically: concurrent edits cannot overwrite each other."""
        async with self._lock:
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
            # Persist first: if the store fails, the live state has not moved either.
            await asyncio.to_thread(self._persist_policy, actor, "policy.set", model, old, policy)
            self._policies[model] = policy
            self._publish(model)
            return policy

    def _persist_policy(self, actor: str, action: str, model: str, old: TrafficPolicy, policy: TrafficPolicy) -> None:
        self.store.put_policy(model, policy)
        self.store.audit(actor, action, model, asdict(old), asdict(policy))

    async def promote(self, actor: str, model: str) -> TrafficPolicy:
        """Make the canary the stable version now (ends a rollout as promoted)."""
        async with self._lock:
            self._model(model)
            if model in self._rollouts:
                await self._rollout_op_locked(actor, model, "rollout.promote", rollout_engine.manual_promote)
                return self.policy(model)
            policy = self.policy(model)
            if policy.canary is None:
                raise Conflict(f"model '{model}' has no canary to promote")
            new = replace(policy, stable=policy.canary, canary=None, canary_weight=0.0)
            await asyncio.to_thread(self._persist_policy, actor, "policy.promote", model, policy, new)
            self._policies[model] = new
        self.metrics.promotions.labels(model).inc()
        self._publish(model)
        return new

    async def rollback(self, actor: str, model: str) -> TrafficPolicy:
        """Send all traffic back to the stable version now (ends a rollout as rolled back)."""
        async with self._lock:
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
            await asyncio.to_thread(self._persist_policy, actor, "policy.rollback", model, policy, new)
            self._policies[model] = new
        self.metrics.rollbacks.labels(model, "manual").inc()
        self._publish(model)
        return new

    # -- versions -----------------------------------------------------------------------

    async def load_version(self, actor: str, model: str, version: str) -> dict[str, Any]:
        async with self._lock:
            served_model = self._model(model)
            current = served_model.versions.get(version)
            if current is not None and current.ready:
                return self.version_view(model, version)  # already loaded: nothing changes, nothing to audit
            served = await self.registry.load_version(model, version)
            if not served.ready:
                raise ModelNotReady(f"cannot load {served.not_ready_reason()}")
            await asyncio.to_thread(self._persist_version, actor, "version.load", served.model, version, "loaded")
            self._publish(model)
            return self.version_view(model, version)

    async def unload_version(self, actor: str, model: str, version: str) -> dict[str, Any]:
        async with self._lock:
            served_model = self._model(model)
            if version not in served_model.versions:
                raise ModelNotFound(f"model '{model}' has no version '{version}'")
            if served_model.versions[version].state is VersionState.UNLOADED:
                return self.version_view(model, version)  # already unloaded: nothing to audit
            policy = self.policy(model)
            roles = [role for role, v in (("stable", policy.stable), ("canary", policy.canary)) if v == version] + (
                ["shadow"] if version in policy.shadows else []
            )
            rollout = self._rollouts.get(model)
            if rollout is not None and version in (rollout.stable, rollout.spec.canary):
                roles.append("rollout")
            if roles:
                raise Conflict(
                    f"model '{model}' version '{version}' is in use as {', '.join(roles)}; change the policy first"
                )
            remaining = [v for v in served_model.ready_versions() if v.version != version]
            if not remaining:
                raise Conflict(f"model '{model}' version '{version}' is its last ready version")
            await self.registry.unload_version(model, version, self.drain_timeout_s)
            await asyncio.to_thread(self._persist_version, actor, "version.unload", model, version, "unloaded")
            self._publish(model)
            return self.version_view(model, version)

    def _persist_version(self, actor: str, action: str, model: str, version: str, desired: str) -> None:
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
        self.store.audit(actor, action, model, None, {"version": version, "state": served.state.value})

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
            "weight": self._weights(model).get(version, 0.0),
            "execution_provider": served.runtime.info.execution_provider if served.runtime else None,
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

    def _require_ready(self, model: ServedModel, version: str) -> None:
        served = model.versions.get(version)
        if served is None:
            raise ModelNotFound(f"model '{model.name}' has no version '{version}'")
        if served.state is not VersionState.READY:
            raise Conflict(f"model '{model.name}' version '{version}' is not loaded ({served.state.value})")

    def _weights(self, model: str) -> dict[str, float]:
        """Share of unpinned traffic per version, as the policy states it."""
        policy = self._policies.get(model)
        served_model = self.registry.models.get(model)
        if served_model is None:
            return {}
        stable = (policy.stable if policy else None) or getattr(
            newest_ready(served_model, excluding=policy.canary if policy else None), "version", None
        )
        weights: dict[str, float] = {}
        canary = served_model.versions.get(policy.canary) if policy is not None and policy.canary else None
        # A canary that is not ready gives its share back to the stable version (as the router does).
        canary_weight = policy.canary_weight if policy is not None and canary is not None and canary.ready else 0.0
        if canary is not None:
            weights[canary.version] = canary_weight
        if stable is not None:
            weights[stable] = 100.0 - canary_weight
        return weights

    def _publish(self, model: str, rollout: RolloutState | None = None) -> None:
        served_model = self.registry.models.get(model)
        if served_model is None:
            return
        weights = self._weights(model)
        for version in served_model.versions:
            self.metrics.traffic_weight.labels(model, version).set(weights.get(version, 0.0))
        rollout = rollout or self._rollouts.get(model)
        if rollout is not None:
            for phase in ROLLOUT_PHASES:
                self.metrics.rollout_phase.labels(model, rollout.spec.canary, phase).set(
                    1 if phase == rollout.phase.value else 0
                )
            self.metrics.rollout_step.labels(model).set(rollout.step)


def _num(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
