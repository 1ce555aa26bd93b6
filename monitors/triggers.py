"""Trigger rules: when does a monitored figure call for action? Pure: figures and a time in, a verdict out.

A rule names a figure (drift share, a feature's drift score, accuracy, accuracy delta against the
stable, ...), a threshold and a direction, how many consecutive breaching runs it takes, and a
cooldown. `observe` folds one run's figure into the rule's state for one model version and says
whether the rule fires now:

- a run without the figure (too few rows or labels) changes nothing: no data is neither a breach
  nor a recovery;
- a run within the threshold ends the streak;
- the `windows`-th breaching run in a row fires, unless the rule fired for this version less than
  `cooldown_s` ago: one drift episode calls the retraining hook once, however many runs see it.

Which action a firing takes (roll a canary back, call the stable's retraining hook) is the caller's
business; the clock is the caller's too (seconds, any origin), so this is tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["above", "below"]

LOWER_IS_WORSE = frozenset({"accuracy", "precision", "recall", "f1"})
"""Figures that breach when they fall below the threshold; every other one breaches above it."""


@dataclass(frozen=True)
class Rule:
    name: str
    figure: str
    threshold: float
    direction: Direction | None = None
    windows: int = 1
    cooldown_s: float = 3600.0
    on: tuple[str, ...] = ("stable", "canary")

    @property
    def effective_direction(self) -> Direction:
        if self.direction is not None:
            return self.direction
        return "below" if self.figure in LOWER_IS_WORSE else "above"

    @property
    def kind(self) -> str:
        """Which monitor run produces the figure: "drift" or "accuracy"."""
        return (
            "drift"
            if self.figure in ("drift_share", "dataset_drift") or self.figure.startswith("feature:")
            else "accuracy"
        )

    def breached(self, value: float) -> bool:
        if self.effective_direction == "below":
            return value < self.threshold
        return value > self.threshold


@dataclass(frozen=True)
class RuleState:
    streak: int = 0
    """Consecutive breaching runs since the last firing or recovery."""
    last_fired_at: float | None = None


@dataclass(frozen=True)
class Observation:
    state: RuleState
    fired: bool
    breached: bool | None
    """None: the run had no value for the figure."""
    reason: str


def observe(rule: Rule, state: RuleState, value: float | None, now: float) -> Observation:
    if value is None:
        return Observation(state, False, None, f"no {rule.figure} in this run")
    op = "<" if rule.effective_direction == "below" else ">"
    if not rule.breached(value):
        return Observation(
            RuleState(0, state.last_fired_at), False, False, f"{rule.figure} {value:.4g} within {rule.threshold:g}"
        )
    streak = state.streak + 1
    what = f"{rule.figure} {value:.4g} {op} {rule.threshold:g}, {streak} run(s) in a row of {rule.windows}"
    if streak < rule.windows:
        return Observation(RuleState(streak, state.last_fired_at), False, True, what)
    if state.last_fired_at is not None and now - state.last_fired_at < rule.cooldown_s:
        left = rule.cooldown_s - (now - state.last_fired_at)
        return Observation(
            RuleState(streak, state.last_fired_at), False, True, f"{what}; cooling down {left:.0f} s more"
        )
    return Observation(RuleState(0, now), True, True, what)


def figure_value(figure: str, figures: Mapping[str, Any]) -> float | None:
    """The rule's figure out of one run's figures (`drift_share`, `feature:<column>`, `accuracy`, ...)."""
    value = figures.get(figure)
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None
