"""What a progressive rollout is: its spec (what the user asked for) and its state (where it stands).

Plain data, serialisable to JSON for the store and the admin API. The decisions live in
`rollout_checks` (is this window good?) and `rollout_engine` (what happens next?), both pure.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gateway.serving.window_stats import WindowSummary


class Phase(str, enum.Enum):
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED)


class Verdict(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "no_data"


@dataclass(frozen=True)
class CheckSpec:
    """One analysis check: `name` picks the function in rollout_checks; `threshold` its limit."""

    name: str
    threshold: float
    min_requests: int = 20
    """Fewer canary requests (or shadow comparisons) than this in a window: NO_DATA."""


DEFAULT_CHECKS = (
    CheckSpec("error_ratio", 1.5),  # canary error rate <= 1.5 x stable's (+1 point of slack)
    CheckSpec("latency_p99_ratio", 1.5),  # canary p99 <= 1.5 x stable's
)


@dataclass(frozen=True)
class RolloutSpec:
    canary: str
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    """Canary weight (percent) at each step; the last passing step promotes."""
    interval_s: float = 60.0
    """Length of one analysis window."""
    failure_threshold: int = 2
    """Failed windows (in total) that roll the canary back."""
    max_no_data_windows: int = 5
    """Consecutive windows without enough canary data that count as one failure."""
    checks: tuple[CheckSpec, ...] = DEFAULT_CHECKS

    def problems(self) -> list[str]:
        issues = []
        if not self.steps:
            issues.append("steps must not be empty")
        if any(not 0 < s <= 100 for s in self.steps):
            issues.append(f"every step must be in (0, 100], got {list(self.steps)}")
        if list(self.steps) != sorted(self.steps):
            issues.append(f"steps must rise, got {list(self.steps)}")
        if self.interval_s <= 0:
            issues.append("interval_s must be positive")
        if self.failure_threshold < 1:
            issues.append("failure_threshold must be at least 1")
        if self.max_no_data_windows < 1:
            issues.append("max_no_data_windows must be at least 1")
        return issues

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RolloutSpec:
        checks = tuple(CheckSpec(**c) for c in doc.get("checks", [asdict(c) for c in DEFAULT_CHECKS]))
        return cls(
            canary=str(doc["canary"]),
            steps=tuple(float(s) for s in doc.get("steps", (5.0, 25.0, 50.0, 100.0))),
            interval_s=float(doc.get("interval_s", 60.0)),
            failure_threshold=int(doc.get("failure_threshold", 2)),
            max_no_data_windows=int(doc.get("max_no_data_windows", 5)),
            checks=checks,
        )


@dataclass(frozen=True)
class VersionWindow:
    """What one version did during one analysis window."""

    requests: int = 0
    errors: int = 0
    """Requests that failed on the version's side (runtime errors, timeouts), not the caller's 4xx."""
    p99_s: float | None = None
    shadow_compared: int = 0
    """Times this version ran as a shadow and its answer was compared with the primary's."""
    shadow_agreed: int = 0
    drift_share: float | None = None
    """The newest drift run's share of drifted features for this version (monitors), if any."""
    drift_rows: int = 0
    accuracy: float | None = None
    """Classification accuracy over the version's newest labeled window (monitors), if any."""
    mae: float | None = None
    """Regression mean absolute error over that window, if any."""
    labeled: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @classmethod
    def from_summary(cls, summary: WindowSummary) -> VersionWindow:
        """The analysis figures of what the replicas published for one version (merged)."""
        return cls(
            requests=summary.requests,
            errors=summary.errors,
            p99_s=summary.percentile(0.99),
            shadow_compared=summary.shadow_compared,
            shadow_agreed=summary.shadow_agreed,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> VersionWindow:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass(frozen=True)
class Window:
    canary: VersionWindow
    stable: VersionWindow


@dataclass(frozen=True)
class CheckResult:
    check: str
    verdict: Verdict
    detail: str


@dataclass(frozen=True)
class RolloutState:
    model: str
    stable: str
    spec: RolloutSpec
    phase: Phase = Phase.PROGRESSING
    step: int = 0
    """Index into spec.steps of the weight in force."""
    failures: int = 0
    no_data_windows: int = 0
    window_started_at: float = 0.0
    """Clock time the current analysis window began (the injected clock's seconds)."""
    started_at: float = 0.0
    """Clock time the rollout began: monitor figures from before it are no evidence about it."""
    last_results: tuple[CheckResult, ...] = field(default=())
    reason: str = ""
    revision: int = 0
    """The control revision that opened the current window: the window is the traffic routed from then on
    (every replica tags each request with the revision of the policy that routed it)."""
    baselines: tuple[tuple[int, VersionWindow], ...] = ()
    """(min_requests, the stable's newest window of this rollout with at least that many requests): what
    stands in for a window whose stable served too few (at a 100% step it serves none)."""
    shadow_evidence: VersionWindow | None = None
    """What the canary did as a shadow before the rollout began: the shadow_agreement check's evidence."""

    @property
    def weight(self) -> float:
        if self.phase is Phase.PROMOTED:
            return 100.0
        if self.phase.finished:
            return 0.0
        return self.spec.steps[self.step]

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["phase"] = self.phase.value
        doc["spec"] = self.spec.to_json()
        doc["last_results"] = [
            {"check": r.check, "verdict": r.verdict.value, "detail": r.detail} for r in self.last_results
        ]
        doc["weight"] = self.weight
        doc["baselines"] = [{"min_requests": m, "window": w.to_json()} for m, w in self.baselines]
        doc["shadow_evidence"] = None if self.shadow_evidence is None else self.shadow_evidence.to_json()
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RolloutState:
        return cls(
            model=doc["model"],
            stable=doc["stable"],
            spec=RolloutSpec.from_json(doc["spec"]),
            phase=Phase(doc["phase"]),
            step=int(doc["step"]),
            failures=int(doc["failures"]),
            no_data_windows=int(doc.get("no_data_windows", 0)),
            window_started_at=float(doc["window_started_at"]),
            started_at=float(doc.get("started_at", doc["window_started_at"])),
            last_results=tuple(
                CheckResult(r["check"], Verdict(r["verdict"]), r["detail"]) for r in doc.get("last_results", [])
            ),
            reason=doc.get("reason", ""),
            revision=int(doc.get("revision", 0)),
            baselines=tuple(
                (int(b["min_requests"]), VersionWindow.from_json(b["window"])) for b in doc.get("baselines", [])
            ),
            shadow_evidence=(
                VersionWindow.from_json(doc["shadow_evidence"]) if doc.get("shadow_evidence") is not None else None
            ),
        )
