"""Which version serves a request. Pure: a function of the model's state and the request.

Today: an explicit version in the URL wins; otherwise the newest ready version. The traffic
policy (stable, canary weight, sticky key, shadows) plugs in here.
"""

from __future__ import annotations

from gateway.errors import ModelNotFound, ModelNotReady
from gateway.registry import ServedModel, ServedVersion


def pick_version(model: ServedModel, requested: str | None) -> ServedVersion:
    if requested:
        served = model.versions.get(requested)
        if served is None:
            raise ModelNotFound(
                f"model '{model.name}' has no version '{requested}' (serving {sorted(model.versions, key=_num)})"
            )
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


def _num(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
