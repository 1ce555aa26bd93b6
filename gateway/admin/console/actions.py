"""The console's actions: a submitted form becomes the admin API's own request body and the same
`ControlPlane` or `MonitorService` call, so validation, refusals and the audit event are the API's.

A form field that is left blank is left out of the body (the API's default applies). A body that does
not validate is refused with the API's 422 message; a refused change with the status and message its
domain error maps to (409, 404, 400, 503), as the admin API would answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from gateway.admin.api import RolloutBody, ShadowBody, TrafficBody
from gateway.admin.monitor_api import RunBody
from gateway.control.monitor_service import MonitorService
from gateway.control.plane import ControlPlane
from gateway.control.rollout_checks import CHECKS
from gateway.errors import SluiceError, mapping_of
from gateway.serving.http_app import validation_message

Form = Mapping[str, list[str]]

CHECK_DEFAULTS: dict[str, tuple[float, bool]] = {
    "error_ratio": (1.5, True),
    "latency_p99_ratio": (1.5, True),
    "shadow_agreement": (0.95, False),
    "drift": (0.3, False),
    "accuracy": (0.05, False),
}
"""The start-canary form's checks: default threshold, and whether the box starts ticked (the API's
default checks are error_ratio and latency_p99_ratio)."""


def check_names() -> list[str]:
    """Every check the rollout engine knows, the usual ones first."""
    return [*CHECK_DEFAULTS, *sorted(n for n in CHECKS if n not in CHECK_DEFAULTS)]


@dataclass(frozen=True)
class Outcome:
    status: int
    message: str

    @property
    def ok(self) -> bool:
        return self.status < 400


def _one(form: Form, name: str) -> str | None:
    values = form.get(name)
    if not values or not values[-1].strip():
        return None
    return values[-1].strip()


def _set(body: dict[str, Any], form: Form, name: str, key: str | None = None) -> None:
    value = _one(form, name)
    if value is not None:
        body[key or name] = value


def rollout_body(form: Form) -> dict[str, Any]:
    """The POST /admin/models/{m}/rollout body the start-canary form describes."""
    body: dict[str, Any] = {}
    _set(body, form, "canary")
    steps = _one(form, "steps")
    if steps is not None:
        body["steps"] = [s.strip() for s in steps.replace(";", ",").split(",") if s.strip()]
    for name in ("interval_s", "failure_threshold", "max_no_data_windows"):
        _set(body, form, name)
    checks = []
    for name in check_names():
        if _one(form, f"check_{name}") is None:
            continue
        check: dict[str, Any] = {"name": name}
        _set(check, form, f"threshold_{name}", "threshold")
        _set(check, form, f"min_requests_{name}", "min_requests")
        checks.append(check)
    body["checks"] = checks
    return body


def traffic_body(form: Form) -> dict[str, Any]:
    """A PATCH /admin/models/{m}/traffic body: the stable, the canary (none: "") and its weight."""
    body: dict[str, Any] = {}
    if "stable" in form:
        body["stable"] = _one(form, "stable")
    if "canary" in form:
        body["canary"] = _one(form, "canary")
    _set(body, form, "canary_weight")
    return body


def shadow_body(form: Form) -> dict[str, Any]:
    """A POST /admin/models/{m}/shadow body: the ticked versions and the sample rate."""
    body: dict[str, Any] = {"versions": [v for v in form.get("shadows", []) if v.strip()]}
    _set(body, form, "sample_rate")
    return body


ACTIONS = (
    "rollout",
    "pause",
    "resume",
    "abort",
    "promote",
    "rollback",
    "traffic",
    "shadow",
    "load",
    "unload",
    "drift",
    "accuracy",
)


async def perform(
    action: str, model: str, form: Form, actor: str, control: ControlPlane, monitor: MonitorService
) -> Outcome:
    """Do one console action as `actor`; the outcome's status and message are what the admin API answers."""
    try:
        return await _perform(action, model, form, actor, control, monitor)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]
        return Outcome(422, validation_message(RequestValidationError(errors)))
    except SluiceError as exc:
        return Outcome(mapping_of(exc).http, str(exc))


async def _perform(
    action: str, model: str, form: Form, actor: str, control: ControlPlane, monitor: MonitorService
) -> Outcome:
    simple: dict[str, tuple[Callable[[str, str], Awaitable[Any]], str]] = {
        "pause": (control.pause_rollout, "rollout paused"),
        "resume": (control.resume_rollout, "rollout resumed"),
        "abort": (control.abort_rollout, "rollout aborted: all traffic on the stable version"),
        "promote": (control.promote, "canary promoted: it is the stable version now"),
        "rollback": (control.rollback, "rolled back: all traffic on the stable version"),
    }
    if action in simple:
        call, message = simple[action]
        await call(actor, model)
        return Outcome(200, message)
    if action == "rollout":
        rollout = RolloutBody.model_validate(rollout_body(form))
        state = await control.start_rollout(actor, model, rollout.to_spec())
        steps = ", ".join(f"{s:g}%" for s in state.spec.steps)
        every = f"{state.spec.interval_s:g}"
        return Outcome(201, f"rollout of version {state.spec.canary} started: {steps}, a window every {every} s")
    if action == "traffic":
        traffic = TrafficBody.model_validate(traffic_body(form))
        policy = await control.update_policy(actor, model, traffic.patch())
        canary = f", canary {policy.canary} at {policy.canary_weight:g}%" if policy.canary else ""
        return Outcome(200, f"traffic set: stable {policy.stable or 'newest ready'}{canary}")
    if action == "shadow":
        shadow = ShadowBody.model_validate(shadow_body(form))
        policy = await control.update_policy(actor, model, shadow.change)
        shadows = ", ".join(policy.shadows) or "none"
        return Outcome(200, f"shadows set: {shadows} (sample rate {policy.shadow_sample_rate:g})")
    if action in ("load", "unload"):
        version = _one(form, "version") or ""
        if action == "load":
            view = await control.load_version(actor, model, version)
        else:
            view = await control.unload_version(actor, model, version)
        return Outcome(200, f"version {view['version']} is {view['state']}")
    if action in ("drift", "accuracy"):
        run = RunBody.model_validate({"version": _one(form, "version")})
        runs = await monitor.run(model, action, version=run.version, actor=actor)
        done = "; ".join(f"v{r['version']}: {r['status']} (run {r['id']})" for r in runs)
        return Outcome(200, f"{action} run finished: {done}")
    return Outcome(404, f"unknown console action '{action}'")
