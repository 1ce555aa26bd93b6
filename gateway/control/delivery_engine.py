"""What happens next in a delivery: a version that a repository sync found, taken through its model's delivery
policy. Pure: state, figures and the clock in, state out; the I/O (policy changes, the rollout, the store, audit
events and webhooks) is `gateway.control.delivery`'s.

The loop, in the manner of Flagger, with a shadow gate before any live traffic:

    new version loaded --> SHADOW --gate passed--> ROLLOUT --rollout promoted--> PROMOTED
                             |  \\--gate passed, policy "shadow"--> PASSED (an operator rolls it out)
                             |--too few agree, or too few compared by timeout_s--> REJECTED
                             \\--a newer version arrives--> SUPERSEDED (the newer one is shadowed instead)
                                       ROLLOUT --rolled back or aborted--> ROLLED_BACK

At most one delivery per model at a time. A newer version that arrives while the current one is still in
shadow replaces it (nothing live depends on a shadow, and the newer file is what the retraining produced
last); one that arrives while the current one is rolling out waits (`pending`) and is delivered when that
rollout ends, so a canary under analysis is never swapped for an unjudged one. A REJECTED version never gets
live traffic: its rollout is never started.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from gateway.control.rollout_model import CheckSpec, RolloutSpec
from gateway.serving.model_config import DeliverySection

DEFAULT_THRESHOLDS = {
    "error_ratio": 1.5,
    "latency_p99_ratio": 1.5,
    "shadow_agreement": 0.98,
    "drift": 0.5,
    "accuracy": 0.05,
}
"""A check's threshold when the policy lists it by name only (see rollout_checks for what each means)."""


class DeliveryPhase(str, enum.Enum):
    SHADOW = "shadow"
    ROLLOUT = "rollout"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    PASSED = "passed"
    SUPERSEDED = "superseded"

    @property
    def finished(self) -> bool:
        return self not in (DeliveryPhase.SHADOW, DeliveryPhase.ROLLOUT)


@dataclass(frozen=True)
class DeliveryState:
    model: str
    version: str
    stable: str
    """The version serving when the delivery began: the shadow's primary and the rollout's stable."""
    policy: DeliverySection
    """The model's delivery policy as it was when the delivery began (kept, so a new leader goes on by it)."""
    phase: DeliveryPhase = DeliveryPhase.SHADOW
    started_at: float = 0.0
    phase_started_at: float = 0.0
    shadow_revision: int = 0
    """The control revision that made the version a shadow: its comparisons from then on are the gate's."""
    compared: int = 0
    agreed: int = 0
    reason: str = ""
    pending: str | None = None
    """A newer version that arrived during the rollout: delivered when the rollout ends."""
    prior_sample_rate: float | None = None
    """The model's shadow sample rate before the shadow set the policy's own: given back when the shadow ends."""

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["phase"] = self.phase.value
        doc["policy"] = self.policy.model_dump()
        doc["agreement"] = self.agreement
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DeliveryState:
        return cls(
            model=doc["model"],
            version=doc["version"],
            stable=doc["stable"],
            policy=DeliverySection.model_validate(doc["policy"]),
            phase=DeliveryPhase(doc["phase"]),
            started_at=float(doc["started_at"]),
            phase_started_at=float(doc["phase_started_at"]),
            shadow_revision=int(doc.get("shadow_revision", 0)),
            compared=int(doc.get("compared", 0)),
            agreed=int(doc.get("agreed", 0)),
            reason=doc.get("reason", ""),
            pending=doc.get("pending"),
            prior_sample_rate=doc.get("prior_sample_rate"),
        )


OfferKind = Literal["start", "supersede", "wait", "ignore"]


@dataclass(frozen=True)
class Offer:
    """What to do with a version a sync loaded: `start` a delivery (after `supersede`-ing the current one, if
    `previous` is set), make it `wait` behind the current rollout, or `ignore` it (`reason` says why)."""

    kind: OfferKind
    delivery: DeliveryState | None = None
    previous: DeliveryState | None = None
    reason: str = ""


def _num(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def newer(version: str, than: str) -> bool:
    return _num(version) > _num(than)


def offer(
    current: DeliveryState | None, model: str, version: str, stable: str | None, policy: DeliverySection, now: float
) -> Offer:
    """A sync loaded `version` of `model`, whose serving version is `stable` (None: it has none)."""
    if policy.on_new_version == "none":
        return Offer("ignore", reason="the model's delivery policy is none: loaded only")
    if stable is None:
        return Offer("ignore", reason="no version serves yet to compare it with: loaded only")
    if not newer(version, stable):
        return Offer("ignore", reason=f"not newer than the serving version {stable}")
    if current is not None and not current.phase.finished:
        if current.version == version or (current.pending is not None and not newer(version, current.pending)):
            return Offer("ignore", reason=f"version {current.pending or current.version} is already being delivered")
        if not newer(version, current.version):
            return Offer("ignore", reason=f"not newer than version {current.version}, in delivery")
        if current.phase is DeliveryPhase.ROLLOUT:
            return Offer("wait", delivery=replace(current, pending=version))
        superseded = finish(current, DeliveryPhase.SUPERSEDED, f"superseded by version {version} while in shadow", now)
        return Offer("supersede", delivery=begin(model, version, stable, policy, now), previous=superseded)
    return Offer("start", delivery=begin(model, version, stable, policy, now))


def begin(model: str, version: str, stable: str, policy: DeliverySection, now: float) -> DeliveryState:
    return DeliveryState(model, version, stable, policy, started_at=now, phase_started_at=now)


def finish(state: DeliveryState, phase: DeliveryPhase, reason: str, now: float) -> DeliveryState:
    return replace(state, phase=phase, reason=reason, phase_started_at=now)


def judge_shadow(state: DeliveryState, compared: int, agreed: int, now: float) -> DeliveryState:
    """The shadow gate, given every comparison of the version as a shadow so far. Unchanged phase: keep
    shadowing (the figures are updated)."""
    gate = state.policy.shadow
    counted = replace(state, compared=compared, agreed=agreed)
    if compared >= gate.min_requests:
        agreement = agreed / compared
        figures = f"agreement {agreement:.2%} ({agreed}/{compared}) against version {state.stable}"
        if agreement < gate.min_agreement:
            failed = f"shadow gate failed: {figures} < {gate.min_agreement:.2%}"
            return finish(counted, DeliveryPhase.REJECTED, failed, now)
        passed = f"shadow gate passed: {figures} >= {gate.min_agreement:.2%}"
        if state.policy.on_new_version == "shadow":
            return finish(counted, DeliveryPhase.PASSED, f"{passed}; the policy stops at the shadow", now)
        return finish(counted, DeliveryPhase.ROLLOUT, passed, now)
    if now - state.phase_started_at >= gate.timeout_s:
        reason = (
            f"shadow gate failed: {compared} comparisons in {gate.timeout_s:g} s, "
            f"fewer than the {gate.min_requests} it needs"
        )
        return finish(counted, DeliveryPhase.REJECTED, reason, now)
    return counted


def rollout_ended(state: DeliveryState, promoted: bool, reason: str, now: float) -> DeliveryState:
    """The rollout controller finished the version's rollout (promoted, or rolled back or aborted)."""
    return finish(state, DeliveryPhase.PROMOTED if promoted else DeliveryPhase.ROLLED_BACK, reason, now)


def rollout_spec(state: DeliveryState) -> RolloutSpec:
    """The rollout controller's spec for the delivery's version, from the policy's rollout section."""
    section = state.policy.rollout
    checks = tuple(
        CheckSpec(name, section.thresholds.get(name, DEFAULT_THRESHOLDS.get(name, 0.0)), max(1, section.min_requests))
        for name in section.checks
    )
    return RolloutSpec(
        canary=state.version,
        steps=tuple(section.steps),
        interval_s=section.interval_s,
        failure_threshold=section.failure_threshold,
        max_no_data_windows=section.max_no_data_windows,
        checks=checks,
    )
