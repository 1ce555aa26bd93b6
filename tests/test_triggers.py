"""Trigger rules and the monitors' rollout checks: pure functions, an injected clock, no sleeping."""

from __future__ import annotations

from gateway.control.rollout_checks import accuracy, check_problems, drift
from gateway.control.rollout_model import CheckSpec, RolloutSpec, Verdict, VersionWindow, Window
from monitors.triggers import Rule, RuleState, figure_value, observe


def run(rule: Rule, values: list[float | None], start: float = 0.0, step: float = 60.0) -> list[bool]:
    state, fired = RuleState(), []
    for i, value in enumerate(values):
        seen = observe(rule, state, value, start + i * step)
        state = seen.state
        fired.append(seen.fired)
    return fired


def test_consecutive_windows_are_needed_and_a_recovery_resets_the_streak() -> None:
    rule = Rule("r", "drift_share", 0.3, windows=2, cooldown_s=0)
    assert run(rule, [0.5, 0.1, 0.5, 0.5]) == [False, False, False, True]


def test_no_data_neither_breaches_nor_recovers() -> None:
    rule = Rule("r", "drift_share", 0.3, windows=2, cooldown_s=0)
    assert run(rule, [0.5, None, 0.5]) == [False, False, True]


def test_a_cooldown_makes_one_episode_fire_once_then_a_later_episode_fires_again() -> None:
    rule = Rule("r", "drift_share", 0.3, windows=1, cooldown_s=3600)
    # An episode of 60 breaching runs a minute apart (one hour): one firing; the next hour fires again.
    fired = run(rule, [0.9] * 61)
    assert fired.count(True) == 2 and fired[0] and fired[60]


def test_direction_defaults_by_figure_and_can_be_set() -> None:
    assert Rule("a", "accuracy", 0.9).effective_direction == "below"
    assert Rule("f", "f1", 0.9).effective_direction == "below"
    assert Rule("d", "accuracy_delta", 0.05).effective_direction == "above"
    assert Rule("m", "mae", 2.0).effective_direction == "above"
    assert run(Rule("a", "accuracy", 0.9, cooldown_s=0), [0.95, 0.85]) == [False, True]
    p_value = Rule("p", "feature:age", 0.05, direction="below", cooldown_s=0)
    assert p_value.kind == "drift" and run(p_value, [0.2, 0.01]) == [False, True]
    assert Rule("x", "accuracy_delta", 0.1).kind == "accuracy"


def test_figure_value_reads_flags_and_numbers() -> None:
    figures = {"dataset_drift": True, "drift_share": 0.25, "feature:f0": 0.01, "note": "x"}
    assert figure_value("dataset_drift", figures) == 1.0
    assert figure_value("drift_share", figures) == 0.25
    assert figure_value("feature:f0", figures) == 0.01
    assert figure_value("note", figures) is None and figure_value("accuracy", figures) is None


def window(canary: VersionWindow, stable: VersionWindow | None = None) -> Window:
    return Window(canary=canary, stable=stable or VersionWindow())


def test_drift_check_fails_above_the_share_and_holds_without_a_run() -> None:
    spec = CheckSpec("drift", 0.3, min_requests=100)
    assert drift(window(VersionWindow()), spec).verdict is Verdict.NO_DATA
    assert drift(window(VersionWindow(drift_share=0.9, drift_rows=50)), spec).verdict is Verdict.NO_DATA
    assert drift(window(VersionWindow(drift_share=0.5, drift_rows=300)), spec).verdict is Verdict.FAIL
    assert drift(window(VersionWindow(drift_share=0.2, drift_rows=300)), spec).verdict is Verdict.PASS


def test_accuracy_check_compares_with_the_stable() -> None:
    spec = CheckSpec("accuracy", 0.05, min_requests=20)
    stable = VersionWindow(accuracy=0.92, labeled=100)
    assert accuracy(window(VersionWindow(accuracy=0.90, labeled=100), stable), spec).verdict is Verdict.PASS
    assert accuracy(window(VersionWindow(accuracy=0.80, labeled=100), stable), spec).verdict is Verdict.FAIL
    assert accuracy(window(VersionWindow(accuracy=0.10, labeled=5), stable), spec).verdict is Verdict.NO_DATA
    regression = VersionWindow(mae=1.0, labeled=100)
    assert accuracy(window(VersionWindow(mae=1.04, labeled=100), regression), spec).verdict is Verdict.PASS
    assert accuracy(window(VersionWindow(mae=1.2, labeled=100), regression), spec).verdict is Verdict.FAIL


def test_check_thresholds_are_validated_at_rollout_start() -> None:
    bad = RolloutSpec(canary="2", checks=(CheckSpec("drift", 1.5), CheckSpec("accuracy", -0.1)))
    problems = check_problems(bad)
    assert any("'drift'" in p and "(0, 1]" in p for p in problems)
    assert any("'accuracy'" in p and ">= 0" in p for p in problems)
