"""The console's pure logic without a gateway: live figures, audit summaries, which actions a phase allows.

Time is injected (`now`); nothing sleeps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from gateway.admin.console import figures
from gateway.admin.console.audit_summary import KNOWN_ACTIONS, summary
from gateway.admin.console.pages import render
from gateway.admin.console.views import OVERVIEW, RANGES
from gateway.control import rollout_engine
from gateway.control.delivery_engine import DeliveryPhase
from gateway.control.rollout_model import Phase, RolloutSpec, RolloutState
from gateway.errors import Conflict
from gateway.serving.window_stats import WindowSummary
from gateway.storage.control_state import AuditEvent


def _published_every_second(now: float, rate: int, seconds: int) -> figures.Series:
    """What a replica sending `rate` req/s publishes: one summary a second, up to `now` (the newest second
    is still arriving, so its summary is already there but the bucket it falls in is not complete)."""
    return [
        (datetime.fromtimestamp(now - s + 0.5, timezone.utc), "1", WindowSummary(requests=rate, buckets={100: rate}))
        for s in range(seconds, 0, -1)
    ]


def _bucketed(series: figures.Series, since: float, bucket_s: float) -> figures.Series:
    """`Store.window_series`'s bucketing of the raw publishes (by `since` and `bucket_s`)."""
    merged: dict[float, WindowSummary] = {}
    for at, _version, published in series:
        edge = since + ((at.timestamp() - since) // bucket_s) * bucket_s
        merged.setdefault(edge, WindowSummary()).merge(published)
    return [(datetime.fromtimestamp(e, timezone.utc), "1", s) for e, s in sorted(merged.items())]


def test_live_req_s_counts_complete_buckets_only() -> None:
    """At exactly 10 req/s the live figure is 10, on the models page's buckets and the model page's alike
    (it read 11: the partial newest bucket was counted and the sum divided by 10 s)."""
    for bucket_s in (OVERVIEW[1], RANGES["15m"][1]):
        for offset in (0.0, 0.25, 0.5, 0.75):
            now = 1_000_000.0 + offset
            since = figures.aligned_since(now, 600.0, bucket_s)
            series = _bucketed(_published_every_second(now, 10, 120), since, bucket_s)
            live = figures.live_figures(series, now=now, bucket_s=bucket_s)
            assert live["1"]["rate"] == 10.0, (bucket_s, offset, live)


# -- audit summaries -----------------------------------------------------------------------------------

POLICY = {
    "stable": "1",
    "canary": None,
    "canary_weight": 0.0,
    "shadows": [],
    "shadow_sample_rate": 1.0,
    "sticky_header": None,
    "sticky_parameter": None,
}
DIGEST_1 = "1a2b3c4d5e6f" + "0" * 52
DIGEST_2 = "abcdef012345" + "f" * 52


def event(action: str, before: Any, after: Any, actor: str = "ci") -> AuditEvent:
    return AuditEvent(1, datetime(2026, 1, 1, tzinfo=timezone.utc), actor, action, "mlp", before, after)


def test_every_kind_of_audit_event_is_summarised_by_what_it_holds() -> None:
    artifacts = event("version.artifacts", None, {"sha256": {"1": DIGEST_1, "2": DIGEST_2}}, "control-plane")
    assert summary(artifacts) == "artifacts at start: v1 sha256 1a2b3c4d5e6f…, v2 sha256 abcdef012345…"
    load = event("version.load", None, {"version": "2", "state": "READY", "sha256": DIGEST_2})
    assert summary(load) == "version 2 loaded: READY, sha256 abcdef012345…"
    unload = event("version.unload", None, {"version": "2", "state": "UNLOADED", "sha256": None})
    assert summary(unload) == "version 2 unloaded: UNLOADED"

    sticky = event("policy.set", POLICY, {**POLICY, "sticky_parameter": "user"})
    assert summary(sticky) == "sticky parameter none → user"
    traffic = event("policy.set", POLICY, {**POLICY, "canary": "2", "canary_weight": 10.0})
    assert summary(traffic) == "canary none → 2, canary weight 0% → 10%"
    shadows = event("policy.set", POLICY, {**POLICY, "shadows": ["2", "3"], "shadow_sample_rate": 0.5})
    assert summary(shadows) == "shadows none → 2, 3, shadow sample rate 1 → 0.5"
    newest = event("policy.set", POLICY, {**POLICY, "stable": None})
    assert summary(newest) == "stable 1 → newest ready"
    assert summary(event("policy.set", POLICY, POLICY)) == "no change"
    with_canary = {**POLICY, "canary": "2", "canary_weight": 30.0}
    promote = event("policy.promote", with_canary, {**POLICY, "stable": "2"})
    assert summary(promote) == "canary 2 promoted: stable 1 → 2, canary 2 → none, canary weight 30% → 0%"
    rollback = event("policy.rollback", with_canary, POLICY)
    assert summary(rollback) == "canary 2 rolled back: canary 2 → none, canary weight 30% → 0%"

    rollout = {"spec": {"canary": "2"}, "phase": "progressing", "weight": 10.0, "reason": None}
    start = event("rollout.start", {"rollout": None, "policy": POLICY}, {"rollout": rollout, "policy": POLICY})
    assert summary(start) == "v2 progressing at 10%"
    rolled = {**rollout, "phase": "rolled_back", "weight": 0.0, "reason": "error_ratio failed twice"}
    moves = [{"kind": "hold", "detail": "held"}, {"kind": "rollback", "detail": "rolled back at 10%"}]
    analysis = event("rollout.analysis", {"rollout": rollout}, {"rollout": rolled, "transitions": moves}, "rollouts")
    assert summary(analysis) == "v2 rolled_back at 0%: rolled back at 10%; error_ratio failed twice"

    trigger = {
        "rule": "drift_high",
        "version": "2",
        "role": "canary",
        "reason": "drift 0.6 > 0.3",
        "action": "rollback",
    }
    fired = event("monitor.trigger", None, trigger, "monitor:drift_high")
    assert summary(fired) == "rule drift_high on v2 (canary): drift 0.6 > 0.3; rollback"

    rejected = {"delivery": {"version": "3", "stable": "2", "reason": "shadow gate failed: agreement 0.00% (40/40)"}}
    assert summary(event("delivery.rejected", None, rejected, "delivery")) == (
        "delivery of v3 (against v2): rejected: shadow gate failed: agreement 0.00% (40/40)"
    )

    # A kind this code does not know yet still says which fields it changed.
    assert summary(event("model.renamed", {"name": "a"}, {"name": "b", "by": "x"})) == "changed: by, name"


def test_every_audit_action_the_code_writes_has_its_own_summary() -> None:
    """Each action string the gateway passes to `store.audit` (read from its source) is one `summary` knows."""
    root = Path(__file__).resolve().parent.parent / "gateway"
    written: set[str] = set()
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "store.audit" in text:
            written |= set(re.findall(r'"((?:rollout|policy|version|monitor|delivery)\.[a-z_]+)"', text))
    written.discard("monitor.retrain")  # a webhook's event name, not an audit action
    written |= {f"delivery.{phase.value}" for phase in DeliveryPhase}  # written as f"delivery.{phase}"
    assert {"version.artifacts", "policy.set", "rollout.analysis", "monitor.trigger"} <= written
    assert written <= KNOWN_ACTIONS, written - KNOWN_ACTIONS


def test_audit_before_and_after_show_the_text_escaped_once() -> None:
    """The values read as the text they hold (it showed JSON escapes: `\\u003c`), and markup in them stays text."""
    hostile = "<img src=x onerror=alert(1)> & 'quoted' é"
    row = {
        **event("policy.set", {"sticky_header": None}, {"sticky_header": hostile}).to_json(),
        "at": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "summary": "s",
    }
    html = render("_audit.html", audit=[row]).body.decode()
    assert "\\u003c" not in html and "\\u0026" not in html and "\\u0027" not in html
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &#39;quoted&#39; é" in html
    assert "<img" not in html and "&amp;lt;" not in html
    assert "&#34;sticky_header&#34;: null" in html


# -- which actions a phase allows ----------------------------------------------------------------------


def test_each_phase_allows_exactly_the_actions_the_rollout_engine_takes() -> None:
    """The console enables a button where `allowed_actions` says so; the engine's own 409s come from the same
    function, so a button is enabled exactly where pressing it is not refused."""
    state = rollout_engine.start("m", "1", RolloutSpec(canary="2"), 0.0)
    ops: dict[str, Callable[[RolloutState], RolloutState]] = {
        "pause": rollout_engine.pause,
        "resume": lambda s: rollout_engine.resume(s, 1.0),
        "abort": lambda s: rollout_engine.abort(s, "aborted by ci"),
        "promote": rollout_engine.manual_promote,
        "rollback": lambda s: rollout_engine.manual_rollback(s, "rolled back by ci"),
    }
    assert set(ops) == set(rollout_engine.ROLLOUT_ACTIONS)
    for phase in Phase:
        at_phase = replace(state, phase=phase)
        allowed = rollout_engine.allowed_actions(phase, has_canary=True)
        for name, op in ops.items():
            if name in allowed:
                op(at_phase)
            else:
                with pytest.raises(Conflict):
                    op(at_phase)
    both = {"abort", "promote", "rollback"}
    assert rollout_engine.allowed_actions(Phase.PROGRESSING, has_canary=True) == {"pause", *both}
    assert rollout_engine.allowed_actions(Phase.PAUSED, has_canary=True) == {"resume", *both}
    # No rollout under way (none yet, or it ended): promote and roll back act on the policy's canary, if any.
    assert rollout_engine.allowed_actions(None, has_canary=True) == {"promote", "rollback"}
    assert rollout_engine.allowed_actions(None, has_canary=False) == frozenset()
