"""Rollout checks are pure: a window and a spec in, a verdict out. Table-driven, no server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.control.rollout_checks import (
    CHECKS,
    check_problems,
    evaluate,
    register,
    with_baseline,
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
    (vw(100, 1), vw(0), PASS, "no stable traffic (100% step): absolute 1% limit"),
    (vw(100, 2), vw(0), FAIL, "no stable traffic: 2% is over the absolute limit"),
    (vw(100, 2), vw(5, 5), FAIL, "a stable with too few requests is no baseline, however bad"),
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


def test_with_baseline_stands_in_only_for_an_empty_stable() -> None:
    baseline = vw(1000, 30, p99_ms=5)
    at_100 = Window(vw(500, 20, p99_ms=6), vw(0))
    assert with_baseline(at_100, baseline).stable == baseline
    assert with_baseline(at_100, None) == at_100
    busy = Window(vw(500), vw(10, p99_ms=4))
    assert with_baseline(busy, baseline) == busy
    # 4% errors at 100% would fail the absolute 1% limit, but passes against the stable's usual 3%.
    spec = CheckSpec("error_ratio", 1.5)
    assert CHECKS["error_ratio"](at_100, spec).verdict is FAIL
    assert CHECKS["error_ratio"](with_baseline(at_100, baseline), spec).verdict is PASS
