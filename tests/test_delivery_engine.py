"""The delivery decisions, pure: a new version's offer, the shadow gate on its figures and the clock, the
rollout's outcome, a newer version mid-delivery. No I/O, no sleeping: the clock is a number."""

from __future__ import annotations

from gateway.control import delivery_engine as engine
from gateway.control.delivery_engine import DeliveryPhase, DeliveryState
from gateway.serving.model_config import DeliverySection

POLICY = DeliverySection.model_validate(
    {
        "on_new_version": "rollout",
        "shadow": {"sample_rate": 1.0, "min_requests": 100, "min_agreement": 0.95, "timeout_s": 600},
        "rollout": {"steps": [50, 100], "interval_s": 2, "checks": ["error_ratio", "accuracy"], "min_requests": 5},
    }
)


def started(version: str = "2", stable: str = "1", policy: DeliverySection = POLICY) -> DeliveryState:
    decision = engine.offer(None, "m", version, stable, policy, now=1000.0)
    assert decision.kind == "start" and decision.delivery is not None
    return decision.delivery


def test_a_new_version_starts_in_shadow_and_the_gate_waits_for_enough_comparisons() -> None:
    state = started()
    assert (state.phase, state.stable, state.started_at) == (DeliveryPhase.SHADOW, "1", 1000.0)
    waiting = engine.judge_shadow(state, compared=99, agreed=99, now=1500.0)
    assert waiting.phase is DeliveryPhase.SHADOW and (waiting.compared, waiting.agreed) == (99, 99)


def test_the_gate_passes_to_the_rollout_and_the_rollout_spec_follows_the_policy() -> None:
    state = engine.judge_shadow(started(), compared=200, agreed=196, now=1010.0)
    assert state.phase is DeliveryPhase.ROLLOUT
    assert "passed" in state.reason and "98.00%" in state.reason
    spec = engine.rollout_spec(state)
    assert (spec.canary, spec.steps, spec.interval_s) == ("2", (50.0, 100.0), 2.0)
    assert [(c.name, c.threshold, c.min_requests) for c in spec.checks] == [
        ("error_ratio", 1.5, 5),
        ("accuracy", 0.05, 5),
    ]
    assert engine.rollout_ended(state, True, "done", 1100.0).phase is DeliveryPhase.PROMOTED
    assert engine.rollout_ended(state, False, "checks failed", 1100.0).phase is DeliveryPhase.ROLLED_BACK


def test_too_little_agreement_rejects_and_so_does_a_shadow_nobody_calls() -> None:
    rejected = engine.judge_shadow(started(), compared=100, agreed=50, now=1010.0)
    assert rejected.phase is DeliveryPhase.REJECTED and "50.00%" in rejected.reason and rejected.phase.finished
    silent = engine.judge_shadow(started(), compared=3, agreed=3, now=1000.0 + 600)
    assert silent.phase is DeliveryPhase.REJECTED and "3 comparisons in 600 s" in silent.reason


def test_a_shadow_only_policy_stops_after_the_gate() -> None:
    policy = POLICY.model_copy(update={"on_new_version": "shadow"})
    state = engine.judge_shadow(started(policy=policy), compared=100, agreed=100, now=1010.0)
    assert state.phase is DeliveryPhase.PASSED and state.phase.finished


def test_what_is_not_delivered() -> None:
    none = DeliverySection()
    assert engine.offer(None, "m", "2", "1", none, 0.0).kind == "ignore"
    assert engine.offer(None, "m", "2", None, POLICY, 0.0).kind == "ignore"  # nothing to compare with
    assert engine.offer(None, "m", "1", "3", POLICY, 0.0).kind == "ignore"  # older than what serves
    assert engine.offer(None, "m", "10", "9", POLICY, 0.0).kind == "start"  # numbers, not strings


def test_a_newer_version_replaces_a_shadow_and_waits_behind_a_rollout() -> None:
    shadow = started()
    decision = engine.offer(shadow, "m", "3", "1", POLICY, 2000.0)
    assert decision.kind == "supersede" and decision.previous is not None and decision.delivery is not None
    assert decision.previous.phase is DeliveryPhase.SUPERSEDED and "version 3" in decision.previous.reason
    assert (decision.delivery.version, decision.delivery.phase) == ("3", DeliveryPhase.SHADOW)
    assert engine.offer(shadow, "m", "2", "1", POLICY, 2000.0).kind == "ignore"  # already in delivery

    rolling = engine.judge_shadow(shadow, 100, 100, 1010.0)
    waits = engine.offer(rolling, "m", "3", "1", POLICY, 2000.0)
    assert waits.kind == "wait" and waits.delivery is not None and waits.delivery.pending == "3"
    assert waits.delivery.phase is DeliveryPhase.ROLLOUT and waits.delivery.version == "2"
    assert engine.offer(waits.delivery, "m", "3", "1", POLICY, 2001.0).kind == "ignore"
    assert engine.offer(waits.delivery, "m", "4", "1", POLICY, 2001.0).delivery.pending == "4"  # type: ignore[union-attr]


def test_the_state_round_trips_through_json() -> None:
    state = engine.judge_shadow(started(), 100, 97, 1010.0)
    assert DeliveryState.from_json(state.to_json()) == state
