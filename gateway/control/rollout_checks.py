"""Is this analysis window good? One pure function per check, registered by name.

Each check turns a `Window` (what canary and stable did since the last window) and its
`CheckSpec` into a `CheckResult`. The engine (`rollout_engine`) decides what the verdicts mean.
Checks are looked up by name in `CHECKS`, so other packages (the monitors' drift and accuracy
checks) extend the set by calling `register` instead of editing this module.

Three verdicts, not two: a window where the canary saw too little traffic to judge is NO_DATA,
never a pass. Flagger halts on "no values found"; the engine here holds the step and, when the
canary stays silent, counts the silence as a failure, so an unused canary rolls back instead of
hanging forever.

Baselines: a check that compares against the stable's traffic (`register(..., baseline=True)`) needs a
stable window of at least its `min_requests`, never a sliver: a handful of stable requests would excuse
any canary, or inflate the stable's p99 and condemn a good one. When a window's own stable has fewer
(at a 100% step it has none), `evaluate` stands in the stable's newest window of this rollout that had
enough (`next_baselines` keeps them), says so in the detail, or answers NO_DATA when there is none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from gateway.control.rollout_model import CheckResult, CheckSpec, RolloutSpec, Verdict, VersionWindow, Window

CheckFn = Callable[[Window, CheckSpec], CheckResult]

ERROR_RATE_SLACK = 0.01
"""Absolute error rate added to the stable's before comparing (one percentage point), so that
one error among a few canary requests against none on the stable does not fail the window."""

CHECKS: dict[str, CheckFn] = {}
"""Every known check by name. Add to it with `register`."""

STABLE_BASELINE: set[str] = set()
"""Checks that compare the canary with the stable's traffic in the same window (and so need a baseline)."""


def register(name: str, *, baseline: bool = False) -> Callable[[CheckFn], CheckFn]:
    """Decorator: make `fn` the check called `name` (a later registration replaces an earlier one).
    `baseline`: it reads `window.stable`'s requests, errors or latency."""

    def add(fn: CheckFn) -> CheckFn:
        CHECKS[name] = fn
        if baseline:
            STABLE_BASELINE.add(name)
        else:
            STABLE_BASELINE.discard(name)
        return fn

    return add


def _too_few(count: int, spec: CheckSpec) -> bool:
    # At least one sample even when min_requests is 0: no traffic is never a pass.
    return count < max(1, spec.min_requests)


def _pct(rate: float) -> str:
    return f"{rate * 100:.2f}%"


def _thin(window: Window, spec: CheckSpec) -> CheckResult | None:
    """NO_DATA when either side served too few requests to judge; None when both have enough."""
    for side, served in (("canary", window.canary.requests), ("stable", window.stable.requests)):
        if _too_few(served, spec):
            return CheckResult(
                spec.name, Verdict.NO_DATA, f"{side} served {served} requests, fewer than {spec.min_requests}"
            )
    return None


@register("error_ratio", baseline=True)
def error_ratio(window: Window, spec: CheckSpec) -> CheckResult:
    """FAIL when canary error rate > stable error rate x threshold + 1 point; NO_DATA when either side
    served fewer than `min_requests` (see the module's note on baselines)."""
    if (thin := _thin(window, spec)) is not None:
        return thin
    canary, stable = window.canary, window.stable
    canary_rate = canary.errors / canary.requests
    stable_rate = stable.errors / stable.requests
    limit = stable_rate * spec.threshold + ERROR_RATE_SLACK
    basis = f"stable {_pct(stable_rate)} ({stable.errors}/{stable.requests}) x {spec.threshold:g} + 1 point"
    verdict = Verdict.FAIL if canary_rate > limit else Verdict.PASS
    detail = (
        f"canary error rate {_pct(canary_rate)} ({canary.errors}/{canary.requests}) "
        f"{'>' if verdict is Verdict.FAIL else '<='} limit {_pct(limit)} ({basis})"
    )
    return CheckResult(spec.name, verdict, detail)


@register("latency_p99_ratio", baseline=True)
def latency_p99_ratio(window: Window, spec: CheckSpec) -> CheckResult:
    """FAIL when canary p99 > stable p99 x threshold; NO_DATA when either side served fewer than
    `min_requests` or has no p99."""
    if (thin := _thin(window, spec)) is not None:
        return thin
    canary, stable = window.canary, window.stable
    if canary.p99_s is None or stable.p99_s is None:
        side = "canary" if canary.p99_s is None else "stable"
        return CheckResult(spec.name, Verdict.NO_DATA, f"no p99 latency for the {side} in this window")
    limit = stable.p99_s * spec.threshold
    verdict = Verdict.FAIL if canary.p99_s > limit else Verdict.PASS
    detail = (
        f"canary p99 {canary.p99_s * 1000:.3f} ms over {canary.requests} requests "
        f"{'>' if verdict is Verdict.FAIL else '<='} limit {limit * 1000:.3f} ms "
        f"(stable p99 {stable.p99_s * 1000:.3f} ms over {stable.requests} requests x {spec.threshold:g})"
    )
    return CheckResult(spec.name, verdict, detail)


@register("shadow_agreement")
def shadow_agreement(window: Window, spec: CheckSpec) -> CheckResult:
    """FAIL when the canary, run as a shadow, agreed with the primary less often than `threshold` (0-1)."""
    canary = window.canary
    if _too_few(canary.shadow_compared, spec):
        return CheckResult(
            spec.name,
            Verdict.NO_DATA,
            f"canary was compared as a shadow {canary.shadow_compared} times, fewer than {spec.min_requests}",
        )
    ratio = canary.shadow_agreed / canary.shadow_compared
    verdict = Verdict.FAIL if ratio < spec.threshold else Verdict.PASS
    detail = (
        f"shadow agreement {_pct(ratio)} ({canary.shadow_agreed}/{canary.shadow_compared}) "
        f"{'<' if verdict is Verdict.FAIL else '>='} threshold {_pct(spec.threshold)}"
    )
    return CheckResult(spec.name, verdict, detail)


@register("drift")
def drift(window: Window, spec: CheckSpec) -> CheckResult:
    """FAIL when the canary's newest drift run (since the rollout began) found a share of drifted
    features above `threshold` (0-1); NO_DATA without such a run on at least `min_requests` rows."""
    canary = window.canary
    if canary.drift_share is None or _too_few(canary.drift_rows, spec):
        return CheckResult(
            spec.name,
            Verdict.NO_DATA,
            f"no drift run for the canary on at least {spec.min_requests} rows since the rollout began",
        )
    verdict = Verdict.FAIL if canary.drift_share > spec.threshold else Verdict.PASS
    detail = (
        f"canary drift share {_pct(canary.drift_share)} over {canary.drift_rows} rows "
        f"{'>' if verdict is Verdict.FAIL else '<='} threshold {_pct(spec.threshold)}"
    )
    return CheckResult(spec.name, verdict, detail)


@register("accuracy")
def accuracy(window: Window, spec: CheckSpec) -> CheckResult:
    """FAIL when the canary's accuracy on labeled predictions is more than `threshold` below the stable's
    (classifiers: absolute points, 0.05 = 5 points), or its MAE more than `threshold` above the stable's
    relative to it (regressors: 0.05 = 5% worse). NO_DATA with fewer than `min_requests` labels on either side."""
    canary, stable = window.canary, window.stable
    if _too_few(canary.labeled, spec) or _too_few(stable.labeled, spec):
        return CheckResult(
            spec.name,
            Verdict.NO_DATA,
            f"labeled predictions: canary {canary.labeled}, stable {stable.labeled}; need {spec.min_requests} each",
        )
    if canary.accuracy is not None and stable.accuracy is not None:
        drop = stable.accuracy - canary.accuracy
        verdict = Verdict.FAIL if drop > spec.threshold else Verdict.PASS
        detail = (
            f"canary accuracy {_pct(canary.accuracy)} vs stable {_pct(stable.accuracy)}: drop {_pct(drop)} "
            f"{'>' if verdict is Verdict.FAIL else '<='} {_pct(spec.threshold)}"
        )
        return CheckResult(spec.name, verdict, detail)
    if canary.mae is not None and stable.mae is not None:
        limit = stable.mae * (1 + spec.threshold)
        verdict = Verdict.FAIL if canary.mae > limit else Verdict.PASS
        detail = (
            f"canary MAE {canary.mae:.4g} {'>' if verdict is Verdict.FAIL else '<='} limit {limit:.4g} "
            f"(stable {stable.mae:.4g} x {1 + spec.threshold:g})"
        )
        return CheckResult(spec.name, verdict, detail)
    return CheckResult(spec.name, Verdict.NO_DATA, "no accuracy or MAE figure for both versions")


_RATIO_CHECKS = ("error_ratio", "latency_p99_ratio")
_SHARE_CHECKS = ("shadow_agreement", "drift")


def _unknown(name: str) -> str:
    return f"unknown check {name!r}; known checks: {', '.join(sorted(CHECKS))}"


def check_problems(spec: RolloutSpec) -> list[str]:
    """What is wrong with the spec's checks (`spec.problems()` covers the rest). Call at rollout start."""
    issues = []
    if not spec.checks:
        issues.append("a rollout needs at least one check; without one it would promote on the clock alone")
    for check in spec.checks:
        if check.name not in CHECKS:
            issues.append(_unknown(check.name))
        if check.min_requests < 1:
            issues.append(f"check {check.name!r}: min_requests must be at least 1, got {check.min_requests}")
        if check.name in _RATIO_CHECKS and not check.threshold > 0:
            issues.append(f"check {check.name!r}: threshold is a ratio and must be positive, got {check.threshold}")
        if check.name == "accuracy" and not check.threshold >= 0:
            issues.append(
                f"check 'accuracy': threshold is the largest allowed drop and must be >= 0, got {check.threshold}"
            )
        if check.name in _SHARE_CHECKS and not 0 < check.threshold <= 1:
            issues.append(f"check {check.name!r}: threshold is a share and must be in (0, 1], got {check.threshold}")
    return issues


Baselines = tuple[tuple[int, VersionWindow], ...]
"""(min_requests, the stable's newest window with at least that many requests), as `RolloutState` keeps them."""


def evaluate(window: Window, checks: Iterable[CheckSpec], baselines: Baselines = ()) -> tuple[CheckResult, ...]:
    """Run every check on the window, in order.

    A check that compares against the stable (`STABLE_BASELINE`) gets the stable's window if it served at
    least the check's `min_requests`, else the baseline kept for that many (the detail says which), else
    NO_DATA: a baseline is never thinner than the check asks.

    An unknown name is a ValueError (a spec error `check_problems` should have caught). A check
    that raises gives NO_DATA with the error in its detail rather than breaking the rollout loop:
    a broken check is no evidence against the canary, yet no pass either; if it keeps raising,
    the engine counts the silence as a failure in the end.
    """
    specs = tuple(checks)
    for spec in specs:
        if spec.name not in CHECKS:
            raise ValueError(_unknown(spec.name))
    kept = dict(baselines)
    results = []
    for spec in specs:
        judged, note = window, ""
        need = max(1, spec.min_requests)
        if spec.name in STABLE_BASELINE and window.stable.requests < need:
            baseline = kept.get(need)
            if baseline is None:
                detail = (
                    f"stable served {window.stable.requests} requests, fewer than {need}, and no earlier window "
                    "of this rollout had that many to stand in as the baseline"
                )
                results.append(CheckResult(spec.name, Verdict.NO_DATA, detail))
                continue
            judged = replace(window, stable=baseline)
            note = (
                f" [baseline: the stable's last window with at least {need} requests ({baseline.requests}), "
                f"as this window's stable served {window.stable.requests}]"
            )
        try:
            result = CHECKS[spec.name](judged, spec)
        except Exception as exc:  # a check is an observer: it must not break the loop
            result = CheckResult(spec.name, Verdict.NO_DATA, f"check raised {type(exc).__name__}: {exc}")
        results.append(replace(result, detail=result.detail + note) if note else result)
    return tuple(results)


def next_baselines(baselines: Baselines, stable: VersionWindow, checks: Iterable[CheckSpec]) -> Baselines:
    """The baselines after a window: for each `min_requests` a stable-comparing check asks for, this window's
    stable replaces the kept one if it served at least that many."""
    kept = dict(baselines)
    for spec in checks:
        need = max(1, spec.min_requests)
        if spec.name in STABLE_BASELINE and stable.requests >= need:
            kept[need] = stable
    return tuple(sorted(kept.items()))
