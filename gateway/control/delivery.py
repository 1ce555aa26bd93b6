"""Delivering a new version by its model's policy: the I/O around `delivery_engine`'s decisions.

The repository sync hands each version it loaded to `offer` (and, before it loads one, `prepare` pins the
serving version as the policy's stable, so the newest-ready rule never gives the new file live traffic).
From there a delivery goes on the leader's `tick`:

- SHADOW: the version joins the traffic policy's shadows (`shadow.sample_rate`); its comparisons with the
  serving version, merged from every replica's window summaries, are read (not taken) each tick until the
  gate decides.
- ROLLOUT: the shadow is removed and the rollout controller starts its own rollout of the version, with the
  policy's steps, interval and checks (the same controller, analysis and webhooks as a rollout started by
  hand); the delivery waits for it to end, promoted or rolled back.
- Each step is persisted with its audit event (actor `delivery`, action `delivery.<phase>`) in one fenced
  transaction, then sent as a signed webhook of the same name.

Nothing here is on the request path. State lives in the store, so a new leader picks up where the old one
stood (`tick` reloads the active deliveries at the start of each term).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from gateway.control import delivery_engine as engine
from gateway.control.delivery_engine import DeliveryPhase, DeliveryState
from gateway.control.plane import ControlPlane
from gateway.control.rollout_model import Phase
from gateway.errors import InvalidInput, SluiceError
from gateway.serving.model_config import DeliverySection
from gateway.serving.router import newest_ready
from gateway.serving.traffic import TrafficPolicy

log = logging.getLogger(__name__)

DELIVERY_ACTOR = "delivery"


class DeliveryController:
    def __init__(self, control: ControlPlane, clock: Callable[[], float] | None = None) -> None:
        self.control = control
        self.store = control.store
        self.clock = clock or control.clock
        self._deliveries: dict[str, DeliveryState] = {}
        self._loaded = False
        """Whether this term's active deliveries were read from the store (a new leader reads them first)."""

    # -- reads ---------------------------------------------------------------------------

    def delivery(self, model: str) -> DeliveryState | None:
        return self._deliveries.get(model)

    async def history(self, model: str, limit: int = 20) -> list[DeliveryState]:
        return await asyncio.to_thread(self.store.deliveries, model, limit)

    # -- the sync's hooks ----------------------------------------------------------------

    def _serving(self, model: str) -> str | None:
        policy = self.control.policy(model)
        if policy.stable is not None:
            return policy.stable
        served = newest_ready(self.control.registry.get_model(model))
        return None if served is None else served.version

    async def prepare(self, model: str, version: str, policy: DeliverySection) -> None:
        """Before a sync loads `version`: under a delivery policy, pin the version serving now as the stable,
        so the new one gets no live traffic by being the newest (the policy's stable, None, means newest)."""
        if policy.on_new_version == "none" or self.control.policy(model).stable is not None:
            return
        serving = self._serving(model)
        if serving is None or not engine.newer(version, serving):
            return
        try:
            await self.control.update_policy(
                DELIVERY_ACTOR, model, lambda p: p if p.stable is not None else replace(p, stable=serving)
            )
        except SluiceError as exc:
            log.warning("delivery of %s/%s: could not pin version %s as stable: %s", model, version, serving, exc)

    async def offer(self, model: str, version: str, policy: DeliverySection) -> str:
        """A sync loaded `version`: start, queue or ignore its delivery. Returns what was done, for the report."""
        await self._load()
        now = self.clock()
        decision = engine.offer(self._deliveries.get(model), model, version, self._serving(model), policy, now)
        if decision.kind == "ignore":
            return decision.reason
        assert decision.delivery is not None
        if decision.previous is not None:
            await self._end_shadow(decision.previous)
            await self._record(decision.previous, "delivery.superseded")
        if decision.kind == "wait":
            await self._record(decision.delivery, "delivery.waiting")
            return f"waits for the rollout of version {decision.delivery.version}"
        await self._start(decision.delivery)
        return "delivery started"

    # -- the leader's loop ---------------------------------------------------------------

    async def tick(self) -> None:
        """Move every delivery that can move; cheap when none is under way. Only where the control plane runs."""
        if not self.control.active:
            self._loaded = False
            return
        await self._load()
        for model, state in list(self._deliveries.items()):
            try:
                await self._step(state)
            except SluiceError as exc:  # tried again next tick; said once a tick
                log.warning("delivery of %s version %s: %s", model, state.version, exc)

    def reset(self) -> None:
        """A new term: the next call reads the deliveries under way from the store (another leader's included)."""
        self._loaded = False

    async def _load(self) -> None:
        if not self._loaded:
            active = await asyncio.to_thread(self.store.active_deliveries)
            self._deliveries = {s.model: s for s in active if s.model in self.control.registry.models}
            self._loaded = True

    async def _step(self, state: DeliveryState) -> None:
        now = self.clock()
        if state.phase is DeliveryPhase.SHADOW:
            await self.control.flush_windows()  # this process's own comparisons count at once
            figures = await asyncio.to_thread(
                self.store.peek_windows, state.model, state.version, min_revision=state.shadow_revision
            )
            new = engine.judge_shadow(state, figures.shadow_compared, figures.shadow_agreed, now)
            if new.phase is DeliveryPhase.SHADOW:
                self._deliveries[state.model] = new  # figures only: the view shows them; not an event
                return
            await self._end_shadow(new)
            if new.phase is DeliveryPhase.ROLLOUT:
                try:
                    await self.control.start_rollout(DELIVERY_ACTOR, new.model, engine.rollout_spec(new))
                except InvalidInput as exc:  # the policy's rollout section is wrong: no retry mends it
                    new = engine.finish(new, DeliveryPhase.REJECTED, f"its rollout cannot start: {exc}", now)
                # Conflict (a rollout started by hand is under way): raised, and tried again next tick
            await self._record(new, f"delivery.{new.phase.value}")
        elif state.phase is DeliveryPhase.ROLLOUT and self.control.rollout(state.model) is None:
            last = await self.control.last_rollout(state.model)
            if last is None or last.spec.canary != state.version or not last.phase.finished:
                return
            promoted = last.phase is Phase.PROMOTED
            new = engine.rollout_ended(state, promoted, f"rollout {last.phase.value}: {last.reason}", now)
            await self._record(new, f"delivery.{new.phase.value}")
            if state.pending is not None:
                await self.offer(state.model, state.pending, state.policy)

    # -- the I/O of each step --------------------------------------------------------------

    async def _start(self, state: DeliveryState) -> None:
        """Shadow the version, then record the delivery from the revision that made it a shadow."""
        rate = state.policy.shadow.sample_rate

        def shadowed(p: TrafficPolicy) -> TrafficPolicy:
            shadows = p.shadows if state.version in p.shadows else (*p.shadows, state.version)
            return replace(p, stable=p.stable or state.stable, shadows=shadows, shadow_sample_rate=rate)

        prior = self.control.policy(state.model).shadow_sample_rate
        await self.control.update_policy(DELIVERY_ACTOR, state.model, shadowed)
        started = replace(state, shadow_revision=self.control.view.revision(state.model), prior_sample_rate=prior)
        await self._record(started, "delivery.shadow")

    async def _end_shadow(self, state: DeliveryState) -> None:
        """The version leaves the shadows (a rollout's canary cannot be one, and a finished shadow costs CPU), and
        the model's shadow sample rate is what it was before."""

        def unshadowed(p: TrafficPolicy) -> TrafficPolicy:
            rate = p.shadow_sample_rate
            if state.prior_sample_rate is not None and rate == state.policy.shadow.sample_rate:
                rate = state.prior_sample_rate  # the model's own rate back, unless someone set another meanwhile
            return replace(p, shadows=tuple(v for v in p.shadows if v != state.version), shadow_sample_rate=rate)

        if state.version in self.control.policy(state.model).shadows:
            await self.control.update_policy(DELIVERY_ACTOR, state.model, unshadowed)

    async def _record(self, state: DeliveryState, action: str) -> None:
        """Persist the delivery and its audit event in one fenced transaction, then keep it here and notify."""
        before = self._deliveries.get(state.model)
        prior = {"delivery": before.to_json()} if before is not None and before.version == state.version else None
        after = {"delivery": state.to_json()}

        def persist() -> None:
            with self.store.change():
                self.store.save_delivery(state)
                self.store.audit(DELIVERY_ACTOR, action, state.model, prior, after)

        await asyncio.to_thread(persist)
        if state.phase.finished:
            if self._deliveries.get(state.model, state).version == state.version:
                self._deliveries.pop(state.model, None)
        else:
            self._deliveries[state.model] = state
        if self.control.webhooks is not None:
            self.control.webhooks.deliver_in_background(action, after)
        log.info("%s: model %s version %s (%s)", action, state.model, state.version, state.reason or state.phase.value)


def delivery_view(state: DeliveryState | None) -> dict[str, Any] | None:
    """What `/admin/models/{m}/delivery` and the CLI show of a delivery."""
    if state is None:
        return None
    doc = state.to_json()
    doc["finished"] = state.phase.finished
    doc["rollout_spec"] = asdict(engine.rollout_spec(state)) if state.policy.on_new_version == "rollout" else None
    return doc
