"""What happens next in a rollout, given one window's verdicts. Pure: state in, state out.

The caller owns the clock, the windows and the I/O (traffic weights, store, webhooks); these
functions only decide. That makes a whole rollout, from 5% to promotion or rollback, a loop
over `advance` in a test, with no sleeping.

Rules, in the manner of Flagger:
- any FAIL counts one failure; `failure_threshold` failures (in total) roll the canary back;
- otherwise any NO_DATA holds the step; `max_no_data_windows` held windows in a row count as
  one failure, so a canary nobody calls rolls back instead of waiting forever;
- a window where every check passed moves to the next step; passing the last step promotes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from gateway.control.rollout_checks import check_problems
from gateway.control.rollout_model import CheckResult, Phase, RolloutSpec, RolloutState, Verdict
from gateway.errors import Conflict, InvalidInput

TransitionKind = Literal["step", "promote", "rollback", "hold", "failure"]


@dataclass(frozen=True)
class Transition:
    """One thing that happened in `advance`: the caller applies weights and sends webhooks from these."""

    kind: TransitionKind
    from_weight: float
    to_weight: float
    detail: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def start(model: str, stable: str, spec: RolloutSpec, now: float) -> RolloutState:
    """A new rollout at the first step; its first window starts now.

    Raises InvalidInput listing every problem with the spec, so the operator fixes them at once.
    """
    issues = spec.problems() + check_problems(spec)
    if spec.canary == stable:
        issues.append(f"version {stable!r} cannot be both stable and canary")
    if issues:
        raise InvalidInput(f"invalid rollout of model {model!r}: " + "; ".join(issues))
    return RolloutState(model=model, stable=stable, spec=spec, window_started_at=now, started_at=now)


def due(state: RolloutState, now: float) -> bool:
    """Whether the current analysis window is over and `advance` should be called."""
    return state.phase is Phase.PROGRESSING and now - state.window_started_at >= state.spec.interval_s


def _names(results: Sequence[CheckResult]) -> str:
    return ", ".join(r.check for r in results)


def _details(results: Sequence[CheckResult]) -> str:
    return "; ".join(f"{r.check}: {r.detail}" for r in results)


def advance(state: RolloutState, results: Sequence[CheckResult], now: float) -> tuple[RolloutState, list[Transition]]:
    """Apply one window's check results; only a PROGRESSING rollout moves.

    An empty `results` is treated as no data: a window nobody judged is not a pass.
    """
    if state.phase is not Phase.PROGRESSING:
        return state, []
    spec = state.spec
    weight = state.weight
    base = replace(state, window_started_at=now, last_results=tuple(results))
    failed = [r for r in results if r.verdict is Verdict.FAIL]
    silent = [r for r in results if r.verdict is Verdict.NO_DATA]

    if failed:
        failures = state.failures + 1
        detail = f"failure {failures} of {spec.failure_threshold}: {_details(failed)}"
        reason = f"checks failed: {_names(failed)} ({_details(failed)})"
        return _failure(base, failures, detail, reason)

    if silent or not results:
        held = state.no_data_windows + 1
        what = _details(silent) if silent else "no check results"
        if held < spec.max_no_data_windows:
            hold = Transition("hold", weight, weight, f"no data {held} of {spec.max_no_data_windows} windows: {what}")
            return replace(base, no_data_windows=held), [hold]
        failures = state.failures + 1
        detail = f"failure {failures} of {spec.failure_threshold}: no canary data for {held} windows in a row ({what})"
        reason = f"no canary data: {held} windows in a row without enough data, {failures} failures ({what})"
        return _failure(replace(base, no_data_windows=0), failures, detail, reason)

    passed = replace(base, no_data_windows=0)
    if state.step + 1 < len(spec.steps):
        new = replace(passed, step=state.step + 1)
        return new, [Transition("step", weight, new.weight, f"all checks passed: {_details(results)}")]
    promoted = replace(passed, phase=Phase.PROMOTED, reason="all checks passed at every step")
    return promoted, [Transition("promote", weight, 100.0, f"all checks passed at the last step ({weight:g}%)")]


def _failure(state: RolloutState, failures: int, detail: str, reason: str) -> tuple[RolloutState, list[Transition]]:
    """Count a failed window; roll back at the threshold. A failed window ends any no-data streak."""
    weight = state.weight
    counted = replace(state, failures=failures, no_data_windows=0)
    transitions = [Transition("failure", weight, weight, detail)]
    if failures < state.spec.failure_threshold:
        return counted, transitions
    rolled = replace(counted, phase=Phase.ROLLED_BACK, reason=reason)
    transitions.append(Transition("rollback", weight, 0.0, reason))
    return rolled, transitions


def _who(state: RolloutState) -> str:
    return f"rollout of {state.spec.canary!r} on model {state.model!r}"


ROLLOUT_ACTIONS = ("pause", "resume", "promote", "abort", "rollback")
"""What an operator can do to a rollout (the admin API's and the console's buttons)."""


def allowed_actions(phase: Phase | None, *, has_canary: bool) -> frozenset[str]:
    """The actions that apply to a model whose active rollout is in `phase` (None: no rollout under way).

    The one rule behind the 409s below and the console's enabled buttons. With no rollout under way,
    promote and roll back act on the policy's canary, so they apply only when there is one (after an
    abort there is none); a finished rollout takes nothing.
    """
    if phase is Phase.PROGRESSING:
        return frozenset({"pause", "abort", "promote", "rollback"})
    if phase is Phase.PAUSED:
        return frozenset({"resume", "abort", "promote", "rollback"})
    if phase is None and has_canary:
        return frozenset({"promote", "rollback"})
    return frozenset()


def _require(state: RolloutState, action: str, verb: str) -> None:
    """Conflict, saying why, unless `allowed_actions` lets `action` apply to the rollout."""
    if action in allowed_actions(state.phase, has_canary=True):
        return
    if state.phase.finished:
        raise Conflict(f"cannot {verb} the {_who(state)}: it is already {state.phase.value}")
    if action == "pause":
        raise Conflict(f"the {_who(state)} is already paused")
    raise Conflict(f"cannot {verb} the {_who(state)}: it is not paused")


def pause(state: RolloutState) -> RolloutState:
    """Stop judging windows; the canary keeps its current weight until resumed."""
    _require(state, "pause", "pause")
    return replace(state, phase=Phase.PAUSED)


def resume(state: RolloutState, now: float) -> RolloutState:
    """Judge windows again; the next window starts now, so paused time is never judged."""
    _require(state, "resume", "resume")
    return replace(state, phase=Phase.PROGRESSING, window_started_at=now)


def abort(state: RolloutState, reason: str) -> RolloutState:
    """Stop the rollout and send all traffic back to the stable (weight 0)."""
    _require(state, "abort", "abort")
    return replace(state, phase=Phase.ABORTED, reason=reason)


def manual_promote(state: RolloutState) -> RolloutState:
    """Skip the remaining steps: the canary becomes the new stable."""
    _require(state, "promote", "promote")
    return replace(state, phase=Phase.PROMOTED, reason="promoted by hand")


def manual_rollback(state: RolloutState, reason: str) -> RolloutState:
    """Judge the canary bad by hand: weight 0, counted as a rollback."""
    _require(state, "rollback", "roll back")
    return replace(state, phase=Phase.ROLLED_BACK, reason=reason)
