"""Rollout checks are pure: a window and a spec in, a verdict out. Table-driven, no server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.control.rollout_checks import (
    CHECKS,
    check_problems,
    evaluate,
    next_baselines,
    register,
)
from gateway.control.rollout_model import CheckResult, CheckSpec, RolloutSpec, Verdict, VersionWindow, Window

PASS, FAIL, NO_DATA = Verdict.PASS, Verdict.FAIL, Verdict.NO_DATA


def vw(
    requests: int = 0, errors: int = 0, p99_ms: float | None = None, compared: int = 0, agreed: int = 0
) -> VersionWindow:
    return VersionWindow(
        requests=requests,
        errors=errors,
        p99_s=None if p99_ms is None else p99_ms / 1000,
        shadow_compared=compared,
        shadow_agreed=agreed,
    )


ERROR_CASES = [
    # (canary, stable, verdict, why)
    (vw(0), vw(1000), NO_DATA, "no canary traffic is never a pass"),
    (vw(19, 19), vw(1000), NO_DATA, "below min_requests, even when every request failed"),
    (vw(20, 0), vw(1000, 0), PASS, "clean canary"),
    (vw(100, 1), vw(1000, 0), PASS, "one error in 100 against none: within the one point of slack"),
    (vw(100, 2), vw(1000, 0), FAIL, "two points over a clean stable"),
    (vw(100, 5), vw(1000, 40), PASS, "5% <= 4% x 1.5 + 1%"),
    (vw(100, 8), vw(1000, 40), FAIL, "8% > 7%"),
    (vw(100, 1), vw(0), NO_DATA, "no stable traffic (100% step) is no baseline: evaluate stands one in"),
    (vw(100, 2), vw(5, 5), NO_DATA, "a stable with too few requests is no baseline, however bad"),
    (vw(100, 0), vw(19, 0), NO_DATA, "nor is one a request short of min_requests"),
]


@pytest.mark.parametrize(("canary", "stable", "verdict", "why"), ERROR_CASES)
def test_error_ratio(canary: VersionWindow, stable: VersionWindow, verdict: Verdict, why: str) -> None:
    result = CHECKS["error_ratio"](Window(canary, stable), CheckSpec("error_ratio", 1.5, min_requests=20))
    assert result.verdict is verdict, why
    assert result.check == "error_ratio"


def test_error_ratio_detail_states_both_rates() -> None:
    result = CHECKS["error_ratio"](Window(vw(100, 8), vw(1000, 40)), CheckSpec("error_ratio", 1.5))
    assert "8.00%" in result.detail and "4.00%" in result.detail and "7.00%" in result.detail


LATENCY_CASES = [
    (vw(10, p99_ms=5), vw(1000, p99_ms=5), NO_DATA, "too few canary requests"),
    (vw(100), vw(1000, p99_ms=5), NO_DATA, "canary has no p99"),
    (vw(100, p99_ms=5), vw(0), NO_DATA, "stable has no p99 (give it a baseline)"),
    (vw(100, p99_ms=50), vw(4, p99_ms=33), NO_DATA, "a sliver of stable traffic is no baseline"),
    (vw(100, p99_ms=5), vw(100, p99_ms=None), NO_DATA, "stable served but has no p99"),
    (vw(100, p99_ms=7.4), vw(1000, p99_ms=5), PASS, "within 1.5x"),
    (vw(100, p99_ms=7.5), vw(1000, p99_ms=5), PASS, "exactly at the limit passes"),
    (vw(100, p99_ms=7.6), vw(1000, p99_ms=5), FAIL, "over 1.5x"),
    (vw(100, p99_ms=1), vw(1000, p99_ms=5), PASS, "faster is fine"),
]


@pytest.mark.parametrize(("canary", "stable", "verdict", "why"), LATENCY_CASES)
def test_latency_p99_ratio(canary: VersionWindow, stable: VersionWindow, verdict: Verdict, why: str) -> None:
    result = CHECKS["latency_p99_ratio"](Window(canary, stable), CheckSpec("latency_p99_ratio", 1.5))
    assert result.verdict is verdict, why


SHADOW_CASES = [
    (vw(compared=19, agreed=19), NO_DATA, "below min_requests comparisons"),
    (vw(1000, compared=0), NO_DATA, "served traffic but was never compared"),
    (vw(compared=100, agreed=95), PASS, "exactly at the threshold"),
    (vw(compared=100, agreed=94), FAIL, "under the threshold"),
    (vw(compared=20, agreed=20), PASS, "all agree"),
]


@pytest.mark.parametrize(("canary", "verdict", "why"), SHADOW_CASES)
def test_shadow_agreement(canary: VersionWindow, verdict: Verdict, why: str) -> None:
    result = CHECKS["shadow_agreement"](Window(canary, vw()), CheckSpec("shadow_agreement", 0.95))
    assert result.verdict is verdict, why


def test_min_requests_zero_still_needs_one_request() -> None:
    empty = Window(vw(0), vw(0))
    for name in ("error_ratio", "latency_p99_ratio", "shadow_agreement"):
        assert CHECKS[name](empty, CheckSpec(name, 1.5, min_requests=0)).verdict is NO_DATA


def test_evaluate_runs_checks_in_order() -> None:
    window = Window(vw(100, 0, p99_ms=20), vw(1000, 0, p99_ms=5))
    results = evaluate(window, (CheckSpec("error_ratio", 1.5), CheckSpec("latency_p99_ratio", 1.5)))
    assert [(r.check, r.verdict) for r in results] == [("error_ratio", PASS), ("latency_p99_ratio", FAIL)]


def test_evaluate_rejects_an_unknown_check_and_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown check 'p50'") as caught:
        evaluate(Window(vw(100), vw(100)), (CheckSpec("error_ratio", 1.5), CheckSpec("p50", 2.0)))
    assert "error_ratio" in str(caught.value) and "shadow_agreement" in str(caught.value)


@pytest.fixture
def raising_check() -> Iterator[str]:
    @register("test_raises")
    def boom(window: Window, spec: CheckSpec) -> CheckResult:
        raise RuntimeError("no reference set")

    yield "test_raises"
    del CHECKS["test_raises"]


def test_a_registered_check_is_used_and_one_that_raises_gives_no_data(raising_check: str) -> None:
    (result,) = evaluate(Window(vw(100), vw(100)), (CheckSpec(raising_check, 1.0),))
    assert result.verdict is NO_DATA
    assert "RuntimeError: no reference set" in result.detail


def test_check_problems() -> None:
    assert check_problems(RolloutSpec(canary="2")) == []
    spec = RolloutSpec(
        canary="2",
        checks=(
            CheckSpec("nope", 1.0),
            CheckSpec("error_ratio", 0.0),
            CheckSpec("shadow_agreement", 95.0),
            CheckSpec("latency_p99_ratio", 1.5, min_requests=0),
        ),
    )
    issues = check_problems(spec)
    assert len(issues) == 4
    assert "unknown check 'nope'" in issues[0] and "latency_p99_ratio" in issues[0]
    assert "positive" in issues[1]
    assert "(0, 1]" in issues[2]
    assert "min_requests" in issues[3]
    assert "at least one check" in check_problems(RolloutSpec(canary="2", checks=()))[0]


ISSUE_11 = (CheckSpec("error_ratio", 1.5, min_requests=20), CheckSpec("latency_p99_ratio", 3.0, min_requests=20))


def test_a_thin_stable_is_replaced_by_the_last_window_that_had_enough_and_the_detail_says_so() -> None:
    """Issue 11, first half: a good canary at 100% against 4 stray stable requests with a small p99."""
    baselines = ((20, vw(788, 0, p99_ms=7.774)),)
    window = Window(vw(600, 0, p99_ms=7.234), vw(4, 0, p99_ms=1.801))
    errors, latency = evaluate(window, ISSUE_11, baselines)
    assert (errors.verdict, latency.verdict) == (PASS, PASS)
    for result in (errors, latency):
        assert "baseline: the stable's last window with at least 20 requests (788)" in result.detail
        assert "this window's stable served 4" in result.detail
    assert "7.774 ms over 788 requests" in latency.detail


def test_a_slow_canary_is_judged_against_the_baseline_not_an_inflated_sliver() -> None:
    """Issue 11, second half: the sliver's p99 was inflated (33 ms) and let a slow canary through."""
    baselines = ((20, vw(788, 0, p99_ms=2.0)),)
    window = Window(vw(600, 0, p99_ms=7.0), vw(3, 0, p99_ms=33.0))
    _, latency = evaluate(window, ISSUE_11, baselines)
    assert latency.verdict is FAIL and "limit 6.000 ms" in latency.detail


def test_without_a_baseline_a_thin_stable_is_no_data_never_a_pass_or_a_fail() -> None:
    window = Window(vw(600, 50, p99_ms=70.0), vw(2, 0, p99_ms=1.0))
    results = evaluate(window, ISSUE_11, ())
    assert [r.verdict for r in results] == [NO_DATA, NO_DATA]
    assert all("no earlier window of this rollout had that many" in r.detail for r in results)


def test_a_baseline_must_meet_the_checks_own_min_requests() -> None:
    checks = (CheckSpec("error_ratio", 1.5, min_requests=50),)
    kept = ((20, vw(30, 0)),)  # enough for a check wanting 20, not for one wanting 50
    (result,) = evaluate(Window(vw(200, 0), vw(0)), checks, kept)
    assert result.verdict is NO_DATA


def test_a_stable_with_enough_traffic_is_its_own_baseline() -> None:
    baselines = ((20, vw(1000, 500, p99_ms=100.0)),)  # a bad old window must not excuse anything now
    window = Window(vw(100, 5, p99_ms=5.0), vw(100, 0, p99_ms=2.0))
    errors, latency = evaluate(window, ISSUE_11, baselines)
    assert (errors.verdict, latency.verdict) == (FAIL, PASS)
    assert "baseline" not in errors.detail


def test_canary_only_checks_take_no_baseline() -> None:
    spec = CheckSpec("shadow_agreement", 0.9, min_requests=20)
    (result,) = evaluate(Window(vw(compared=50, agreed=50), vw(0)), (spec,), ())
    assert result.verdict is PASS


def test_next_baselines_keeps_the_newest_window_with_enough_per_min_requests() -> None:
    checks = (*ISSUE_11, CheckSpec("error_ratio", 1.5, min_requests=100), CheckSpec("shadow_agreement", 0.9, 500))
    first = next_baselines((), vw(150, p99_ms=3.0), checks)
    assert dict(first) == {20: vw(150, p99_ms=3.0), 100: vw(150, p99_ms=3.0)}, "shadow_agreement needs none"
    second = next_baselines(first, vw(60, p99_ms=4.0), checks)
    assert dict(second) == {20: vw(60, p99_ms=4.0), 100: vw(150, p99_ms=3.0)}
    assert next_baselines(second, vw(4, p99_ms=1.0), checks) == second, "a sliver replaces nothing"
