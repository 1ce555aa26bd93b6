"""One line per audit event saying what it holds, for the console's audit log.

Each kind of event the gateway writes has its own reading (the kinds are in `KNOWN_ACTIONS`; a test
checks that every action the code passes to `Store.audit` is one of them). A policy change says which
fields moved, from what to what, so a change of the sticky parameter alone reads as just that. A kind
this code does not know yet still says which fields it changed. Pure: an event in, a string out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

_DIGEST_CHARS = 12
"""How much of a SHA-256 the line shows; the whole digest is in the event's before/after."""

_POLICY_FIELDS: tuple[tuple[str, str], ...] = (
    ("stable", "stable"),
    ("canary", "canary"),
    ("canary_weight", "canary weight"),
    ("shadows", "shadows"),
    ("shadow_sample_rate", "shadow sample rate"),
    ("sticky_header", "sticky header"),
    ("sticky_parameter", "sticky parameter"),
)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _pct(value: Any) -> str:
    return f"{float(value):g}%" if isinstance(value, int | float) else "?"


def _digest(value: Any) -> str:
    return f"sha256 {str(value)[:_DIGEST_CHARS]}…"


def _policy_value(name: str, value: Any) -> str:
    if name == "stable" and value is None:
        return "newest ready"
    if name == "canary_weight":
        return _pct(value)
    if name == "shadow_sample_rate" and isinstance(value, int | float):
        return f"{float(value):g}"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "none"
    return "none" if value is None or value == "" else str(value)


def policy_changes(before: Any, after: Any) -> str:
    """The policy fields that changed, each as "name old → new", in the policy's own order."""
    old, new = _dict(before), _dict(after)
    moved = [
        f"{label} {_policy_value(name, old.get(name))} → {_policy_value(name, new.get(name))}"
        for name, label in _POLICY_FIELDS
        if _policy_value(name, old.get(name)) != _policy_value(name, new.get(name))
    ]
    return ", ".join(moved) or "no change"


def _policy(action: str, before: Any, after: Any) -> str:
    changes = policy_changes(before, after)
    canary = _dict(before).get("canary")
    if action == "policy.promote":
        return f"canary {canary} promoted: {changes}"
    if action == "policy.rollback":
        return f"canary {canary} rolled back: {changes}"
    return changes


def _rollout(action: str, before: Any, after: Any) -> str:
    doc = _dict(after)
    r = _dict(doc.get("rollout"))
    text = f"v{_dict(r.get('spec')).get('canary')} {r.get('phase')} at {_pct(r.get('weight'))}"
    moves = [str(t.get("detail", "")) for t in doc.get("transitions", []) if _dict(t).get("kind") != "hold"]
    if r.get("reason") and r.get("phase") in ("rolled_back", "aborted", "promoted"):
        moves.append(str(r["reason"]))
    moves = [m for m in moves if m]
    return text + (": " + "; ".join(moves) if moves else "")


def _version(action: str, before: Any, after: Any) -> str:
    doc = _dict(after)
    done = "loaded" if action == "version.load" else "unloaded"
    text = f"version {doc.get('version')} {done}: {doc.get('state')}"
    return text + (f", {_digest(doc['sha256'])}" if doc.get("sha256") else "")


def _artifacts(action: str, before: Any, after: Any) -> str:
    digests = _dict(_dict(after).get("sha256"))
    files = ", ".join(f"v{version} {_digest(digest)}" for version, digest in digests.items())
    return f"artifacts at start: {files or 'none'}"


def _trigger(action: str, before: Any, after: Any) -> str:
    doc = _dict(after)
    text = f"rule {doc.get('rule')} on v{doc.get('version')} ({doc.get('role')}): {doc.get('reason')}"
    return text + (f"; {doc['action']}" if doc.get("action") else "")


def _delivery(action: str, before: Any, after: Any) -> str:
    d = _dict(_dict(after).get("delivery"))
    text = f"delivery of v{d.get('version')} (against v{d.get('stable')}): {action.removeprefix('delivery.')}"
    if action == "delivery.waiting":
        return f"{text}: v{d.get('pending')} waits for its rollout to end"
    if action == "delivery.shadow" and not d.get("reason"):
        return f"{text}, sampling {d.get('policy', {}).get('shadow', {}).get('sample_rate')} of requests"
    return text + (f": {d['reason']}" if d.get("reason") else "")


DELIVERY_ACTIONS = ("shadow", "rollout", "promoted", "rolled_back", "rejected", "passed", "superseded", "waiting")
"""`delivery.<phase>` for each phase of `gateway.control.delivery_engine.DeliveryPhase`, and `delivery.waiting`."""


def _generic(before: Any, after: Any) -> str:
    old, new = _dict(before), _dict(after)
    changed = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
    return f"changed: {', '.join(changed)}" if changed else ""


_READERS: dict[str, Callable[[str, Any, Any], str]] = {
    **{f"rollout.{a}": _rollout for a in ("start", "pause", "resume", "abort", "promote", "rollback", "analysis")},
    **{f"policy.{a}": _policy for a in ("set", "promote", "rollback")},
    "version.load": _version,
    "version.unload": _version,
    "version.artifacts": _artifacts,
    "monitor.trigger": _trigger,
    **{f"delivery.{a}": _delivery for a in DELIVERY_ACTIONS},
}
KNOWN_ACTIONS = frozenset(_READERS)


def summary(event: Any) -> str:
    """One line saying what an audit event (`storage.control_state.AuditEvent`) holds."""
    reader = _READERS.get(event.action)
    if reader is None:
        return _generic(event.before, event.after)
    return reader(event.action, event.before, event.after)
