"""Which version serves a request, and which shadows get a copy. Pure: no I/O, no clock.

An explicit `/versions/{v}` always wins (PINNED), whatever the policy. Otherwise the model's
traffic policy decides (see `traffic.decide_route`); with no policy, the newest ready
version serves. A canary that is not ready gives its share back to the stable version.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import ModelNotFound, ModelNotReady
from gateway.serving.registry import ServedModel, ServedVersion
from gateway.serving.request import InferRequest, header_value
from gateway.serving.traffic import Route, TrafficPolicy, decide_route


@dataclass(frozen=True)
class Routed:
    version: ServedVersion
    route: Route
    shadows: tuple[ServedVersion, ...] = ()
    revision: int = 0
    """The control revision of the policy that made this decision (0: no policy)."""


def route_request(
    model: ServedModel, request: InferRequest, policy: TrafficPolicy | None, sequence: int, revision: int = 0
) -> Routed:
    if request.version:
        return Routed(pick_version(model, request.version), Route.PINNED, (), revision)
    if policy is None:
        return Routed(pick_version(model, None), Route.STABLE, (), revision)
    decision = decide_route(policy, sequence, sticky_key(request, policy))
    served = model.versions.get(decision.version) if decision.version else None
    route = decision.route
    if served is None or not served.ready:
        if route is Route.CANARY:
            route = Route.STABLE
        served = pick_version(model, policy.stable)
    shadows = tuple(model.versions[s] for s in decision.shadows if s in model.versions and model.versions[s].ready)
    return Routed(served, route, shadows, revision)


def sticky_key(request: InferRequest, policy: TrafficPolicy) -> str | None:
    if policy.sticky_header:
        value = header_value(request.headers, policy.sticky_header)
        if value is not None:
            return value
    if policy.sticky_parameter:
        param = request.parameters.get(policy.sticky_parameter)
        if param is not None:
            return str(param)
    return None


def pick_version(model: ServedModel, requested: str | None) -> ServedVersion:
    if requested:
        served = model.versions.get(requested)
        if served is None:
            known = sorted(model.versions, key=_num)
            raise ModelNotFound(f"model '{model.name}' has no version '{requested}' (serving {known})")
        if not served.ready:
            raise ModelNotReady(served.not_ready_reason())
        return served
    ready = model.ready_versions()
    if not ready:
        if model.error:
            raise ModelNotReady(f"model '{model.name}' is not ready: {model.error}")
        states = "; ".join(v.not_ready_reason() for v in model.versions.values()) or "it has no versions"
        raise ModelNotReady(f"model '{model.name}' has no ready version: {states}")
    return max(ready, key=lambda v: _num(v.version))


def policy_weights(model: ServedModel, policy: TrafficPolicy | None) -> dict[str, float]:
    """Share (percent) of the model's unpinned traffic each version gets under `policy`, as routing gives it:
    a canary that is not ready gives its share back to the stable version."""
    stable = (policy.stable if policy else None) or getattr(
        newest_ready(model, excluding=policy.canary if policy else None), "version", None
    )
    weights: dict[str, float] = {}
    canary = model.versions.get(policy.canary) if policy is not None and policy.canary else None
    canary_weight = policy.canary_weight if policy is not None and canary is not None and canary.ready else 0.0
    if canary is not None:
        weights[canary.version] = canary_weight
    if stable is not None:
        weights[stable] = 100.0 - canary_weight
    return weights


def newest_ready(model: ServedModel, excluding: str | None = None) -> ServedVersion | None:
    ready = [v for v in model.ready_versions() if v.version != excluding]
    return max(ready, key=lambda v: _num(v.version)) if ready else None


def _num(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
