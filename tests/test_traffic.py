"""The routing decision is pure: proportions, stickiness and shadow sampling without a server."""

from __future__ import annotations

import pytest

from gateway.serving.traffic import Route, TrafficPolicy, decide_route, sticky_point


@pytest.mark.parametrize("weight", [1.0, 5.0, 10.0, 25.0, 50.0, 90.0])
def test_canary_share_holds_within_one_point_over_10000_requests(weight: float) -> None:
    policy = TrafficPolicy(stable="1", canary="2", canary_weight=weight)
    hits = sum(decide_route(policy, n).route is Route.CANARY for n in range(10_000))
    assert abs(hits / 100.0 - weight) < 1.0


def test_share_holds_on_any_window_not_only_from_zero() -> None:
    policy = TrafficPolicy(stable="1", canary="2", canary_weight=10.0)
    for start in (1, 12_345, 987_654):
        hits = sum(decide_route(policy, n).route is Route.CANARY for n in range(start, start + 2_000))
        assert abs(hits / 20.0 - 10.0) < 1.0


def test_no_short_period_a_client_pattern_could_align_with() -> None:
    policy = TrafficPolicy(stable="1", canary="2", canary_weight=10.0)
    every_tenth = [decide_route(policy, n).route is Route.CANARY for n in range(0, 10_000, 10)]
    assert 0.02 < sum(every_tenth) / len(every_tenth) < 0.25


def test_sticky_key_always_lands_on_the_same_version() -> None:
    policy = TrafficPolicy(stable="1", canary="2", canary_weight=30.0)
    for key in (f"user-{i}" for i in range(200)):
        versions = {decide_route(policy, n, key).version for n in range(20)}
        assert len(versions) == 1


def test_raising_the_weight_moves_only_keys_that_must_move() -> None:
    keys = [f"user-{i}" for i in range(5_000)]
    before = TrafficPolicy(stable="1", canary="2", canary_weight=10.0)
    after = TrafficPolicy(stable="1", canary="2", canary_weight=25.0)
    was = {k: decide_route(before, 0, k).version for k in keys}
    now = {k: decide_route(after, 0, k).version for k in keys}
    assert all(now[k] == "2" for k in keys if was[k] == "2"), "no canary key goes back to stable"
    moved = sum(was[k] != now[k] for k in keys)
    assert abs(moved / len(keys) - 0.15) < 0.02
    assert all(sticky_point(k) < 0.25 for k in keys if now[k] == "2")


def test_shadow_sampling_rate_and_shadow_never_shadows_itself() -> None:
    policy = TrafficPolicy(stable="1", shadows=("3",), shadow_sample_rate=0.2)
    copies = sum(bool(decide_route(policy, n).shadows) for n in range(10_000))
    assert abs(copies / 10_000 - 0.2) < 0.01
    pinned_to_shadow = TrafficPolicy(stable="3", shadows=("3",))
    assert decide_route(pinned_to_shadow, 0).shadows == ()


def test_zero_weight_never_routes_to_the_canary() -> None:
    policy = TrafficPolicy(stable="1", canary="2", canary_weight=0.0)
    assert all(decide_route(policy, n, f"k{n}").route is Route.STABLE for n in range(5_000))


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        (TrafficPolicy(canary="2", canary_weight=101), "outside 0-100"),
        (TrafficPolicy(canary="2", canary_weight=-1), "outside 0-100"),
        (TrafficPolicy(canary_weight=5), "no canary version"),
        (TrafficPolicy(stable="2", canary="2"), "both stable and canary"),
        (TrafficPolicy(canary="2", shadows=("2",)), "both canary and shadow"),
        (TrafficPolicy(shadow_sample_rate=2), "outside 0-1"),
    ],
)
def test_policy_problems_are_named(policy: TrafficPolicy, problem: str) -> None:
    assert any(problem in p for p in policy.problems())
