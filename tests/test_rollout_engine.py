"""The rollout engine is pure: whole rollouts run as loops over `advance` with synthetic windows.

Every state the engine produces goes through the JSON round trip the store uses.
"""

from __future__ import annotations

import json

import pytest

from gateway.control import rollout_engine as engine
from gateway.control.rollout_checks import evaluate
from gateway.control.rollout_engine import Transition
from gateway.control.rollout_model import (
    CheckResult,
    CheckSpec,
    Phase,
    RolloutSpec,
    RolloutState,
    Verdict,
    VersionWindow,
    Window,
)
from gateway.errors import Conflict, InvalidInput

SPEC = RolloutSpec(canary="2", interval_s=60.0, failure_threshold=2, max_no_data_windows=3)
GOOD = Window(VersionWindow(200, 0, 0.010), VersionWindow(4000, 2, 0.010))
ERRORING = Window(VersionWindow(200, 30, 0.010), VersionWindow(4000, 2, 0.010))
SLOW = Window(VersionWindow(200, 0, 0.050), VersionWindow(4000, 2, 0.010))
SILENT = Window(VersionWindow(), VersionWindow(4000, 2, 0.010))


def roundtrip(state: RolloutState) -> RolloutState:
    back = RolloutState.from_json(json.loads(json.dumps(state.to_json())))
    assert back == state
    return back


def run(
    windows: list[Window], spec: RolloutSpec = SPEC, until_finished: bool = True
) -> tuple[RolloutState, list[Transition]]:
    """Drive a rollout window by window on a fake clock, as the gateway's loop would."""
    now = 1000.0
    state = roundtrip(engine.start("m", "1", spec, now))
    log: list[Transition] = []
    for window in windows:
        now += spec.interval_s
        assert engine.due(state, now)
        state, transitions = engine.advance(state, evaluate(window, spec.checks), now)
        state = roundtrip(state)
        assert state.window_started_at == now
        log.extend(transitions)
        if until_finished and state.phase.finished:
            break
    return state, log


def test_good_canary_steps_through_every_weight_then_promotes() -> None:
    state, log = run([GOOD] * 10)
    assert state.phase is Phase.PROMOTED and state.weight == 100.0
    assert [(t.kind, t.from_weight, t.to_weight) for t in log] == [
        ("step", 5.0, 25.0),
        ("step", 25.0, 50.0),
        ("step", 50.0, 100.0),
        ("promote", 100.0, 100.0),
    ]
    assert state.failures == 0


def test_erroring_canary_rolls_back_within_failure_threshold_windows() -> None:
    state, log = run([ERRORING] * 10)
    assert state.phase is Phase.ROLLED_BACK and state.weight == 0.0
    assert [t.kind for t in log] == ["failure", "failure", "rollback"]
    assert state.failures == SPEC.failure_threshold
    assert "error_ratio" in state.reason and "15.00%" in state.reason
    assert log[-1].from_weight == 5.0 and log[-1].to_weight == 0.0


def test_slow_canary_rolls_back_on_p99_ratio() -> None:
    state, log = run([GOOD, SLOW, GOOD, SLOW])
    assert state.phase is Phase.ROLLED_BACK
    assert [t.kind for t in log] == ["step", "failure", "step", "failure", "rollback"]
    assert state.reason.startswith("checks failed: latency_p99_ratio (")
    assert log[-1].from_weight == 50.0


def test_silent_canary_holds_then_counts_a_failure_then_rolls_back() -> None:
    state, log = run([SILENT] * 20)
    # max_no_data_windows=3: hold, hold, failure; hold, hold, failure + rollback.
    assert [t.kind for t in log] == ["hold", "hold", "failure", "hold", "hold", "failure", "rollback"]
    assert all(t.from_weight == t.to_weight == 5.0 for t in log[:-1])
    assert state.phase is Phase.ROLLED_BACK
    assert "no canary data" in state.reason
    assert state.no_data_windows == 0


def test_data_after_a_hold_resets_the_no_data_streak() -> None:
    state, log = run([SILENT, SILENT, GOOD, SILENT, SILENT, GOOD], until_finished=False)
    assert [t.kind for t in log] == ["hold", "hold", "step", "hold", "hold", "step"]
    assert state.failures == 0 and state.weight == 50.0 and state.no_data_windows == 0


def test_hold_keeps_the_step_and_records_results() -> None:
    state = engine.start("m", "1", SPEC, 0.0)
    results = evaluate(SILENT, SPEC.checks)
    held, (transition,) = engine.advance(state, results, 60.0)
    assert transition.kind == "hold" and "1 of 3" in transition.detail
    assert held.step == 0 and held.no_data_windows == 1 and held.last_results == results


def test_failures_count_in_total_not_in_a_row() -> None:
    state, log = run([ERRORING, GOOD, GOOD, ERRORING])
    assert [t.kind for t in log] == ["failure", "step", "step", "failure", "rollback"]
    assert state.phase is Phase.ROLLED_BACK


def test_fail_outweighs_no_data_in_the_same_window() -> None:
    state = engine.start("m", "1", SPEC, 0.0)
    results = (
        CheckResult("error_ratio", Verdict.FAIL, "bad"),
        CheckResult("latency_p99_ratio", Verdict.NO_DATA, "none"),
    )
    after, transitions = engine.advance(state, results, 60.0)
    assert [t.kind for t in transitions] == ["failure"] and after.failures == 1 and after.no_data_windows == 0


def test_no_results_is_no_data_not_a_pass() -> None:
    state = engine.start("m", "1", SPEC, 0.0)
    after, (transition,) = engine.advance(state, (), 60.0)
    assert transition.kind == "hold" and after.step == 0


@pytest.mark.parametrize("threshold", [1, 2, 3])
def test_rollback_after_exactly_failure_threshold_failures(threshold: int) -> None:
    spec = RolloutSpec(canary="2", failure_threshold=threshold)
    state, log = run([ERRORING] * 10, spec)
    assert sum(t.kind == "failure" for t in log) == threshold
    assert state.phase is Phase.ROLLED_BACK


def test_due_follows_the_interval_and_only_while_progressing() -> None:
    state = engine.start("m", "1", SPEC, 100.0)
    assert not engine.due(state, 159.9)
    assert engine.due(state, 160.0)
    assert not engine.due(engine.pause(state), 1e9)


def test_pause_stops_advance_and_resume_restarts_the_window() -> None:
    state = engine.start("m", "1", SPEC, 0.0)
    paused = roundtrip(engine.pause(state))
    assert paused.phase is Phase.PAUSED and paused.weight == 5.0, "a paused canary keeps its weight"
    assert engine.advance(paused, evaluate(GOOD, SPEC.checks), 60.0) == (paused, [])
    resumed = roundtrip(engine.resume(paused, 500.0))
    assert resumed.phase is Phase.PROGRESSING and resumed.window_started_at == 500.0
    assert not engine.due(resumed, 550.0)
    with pytest.raises(Conflict, match="already paused"):
        engine.pause(paused)
    with pytest.raises(Conflict, match="not paused"):
        engine.resume(state, 1.0)


def test_abort_and_manual_decisions() -> None:
    state = engine.start("m", "1", SPEC, 0.0)
    aborted = roundtrip(engine.abort(state, "operator cancelled"))
    assert aborted.phase is Phase.ABORTED and aborted.weight == 0.0 and aborted.reason == "operator cancelled"
    promoted = roundtrip(engine.manual_promote(engine.pause(state)))
    assert promoted.phase is Phase.PROMOTED and promoted.weight == 100.0
    rolled = roundtrip(engine.manual_rollback(state, "bad outputs reported"))
    assert rolled.phase is Phase.ROLLED_BACK and rolled.weight == 0.0 and rolled.reason == "bad outputs reported"


@pytest.mark.parametrize("phase", [Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED])
def test_a_finished_rollout_cannot_be_changed(phase: Phase) -> None:
    state = RolloutState("m", "1", SPEC, phase=phase)
    assert engine.advance(state, evaluate(GOOD, SPEC.checks), 60.0) == (state, [])
    for change in (
        engine.pause,
        lambda s: engine.resume(s, 1.0),
        lambda s: engine.abort(s, "x"),
        engine.manual_promote,
        lambda s: engine.manual_rollback(s, "x"),
    ):
        with pytest.raises(Conflict, match=f"already {phase.value}"):
            change(state)


def test_start_rejects_a_bad_spec_listing_every_problem() -> None:
    bad = RolloutSpec(canary="1", steps=(50.0, 5.0), checks=(CheckSpec("p50", 2.0),))
    with pytest.raises(InvalidInput) as caught:
        engine.start("m", "1", bad, 0.0)
    message = str(caught.value)
    assert "steps must rise" in message and "unknown check 'p50'" in message and "both stable and canary" in message


def test_transition_serialises() -> None:
    transition = Transition("step", 5.0, 25.0, "ok")
    assert json.loads(json.dumps(transition.to_json())) == {
        "kind": "step",
        "from_weight": 5.0,
        "to_weight": 25.0,
        "detail": "ok",
    }
