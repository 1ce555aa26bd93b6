"""The admin HTTP API under /admin: models, versions, traffic, shadows, rollouts, the audit log.

Every route needs an admin bearer token (see `admin_auth`); the token's name is the actor the
control plane audits. The routes are thin: they validate the body (pydantic, unknown fields
refused), then call one `ControlPlane` method, which validates against the live state before it
changes anything, so a refused request changes nothing. Errors are `{"error": message}` with
the status the domain error maps to (404 unknown model or version, 409 a clash with the current
state, 422 a body that does not validate).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime, and the
# `Actor` dependency below is local to `build_admin_router` (string annotations could not find it).

from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.admin.auth import AdminAuth
from gateway.control.plane import ControlPlane
from gateway.control.rollout_model import DEFAULT_CHECKS, CheckSpec, RolloutSpec
from gateway.errors import ModelNotReady, Unauthorized
from gateway.serving.openapi_v2 import errors
from gateway.serving.traffic import TrafficPolicy
from gateway.storage.control_state import policy_to_json

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description="An admin token from SLUICE_ADMIN_TOKENS or --admin-tokens-file; its name is the audit actor.",
)

ModelName = Annotated[str, Path(description="Model name, as in the model repository.")]
VersionName = Annotated[str, Path(description="Version, as in the model repository.")]


# -- request bodies -------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrafficBody(_Body):
    """A model's whole traffic policy (PUT replaces it; PATCH changes the fields sent)."""

    stable: str | None = Field(None, description="Version serving the rest of the traffic; null: the newest ready.")
    canary: str | None = Field(None, description="Canary version; null for none.")
    canary_weight: float = Field(0.0, ge=0.0, le=100.0, description="Percent (0-100) of traffic to the canary.")
    shadows: list[str] = Field(default_factory=list, description="Versions that get a copy of requests.")
    shadow_sample_rate: float = Field(1.0, ge=0.0, le=1.0, description="Share (0-1) of requests copied to shadows.")
    sticky_header: str | None = Field(None, description="Header whose value keeps a caller on one version.")
    sticky_parameter: str | None = Field(None, description="V2 parameter that does the same when the header is absent.")

    @field_validator("sticky_header", "sticky_parameter")
    @classmethod
    def _no_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank (use null for none)")
        return value

    def patch(self) -> Callable[[TrafficPolicy], TrafficPolicy]:
        """PATCH: the current policy with the fields this body set (the admin API and the console share it)."""
        changes = self.model_dump(exclude_unset=True)
        if "shadows" in changes:
            changes["shadows"] = tuple(changes["shadows"])
        return lambda current: replace(current, **changes)

    def to_policy(self) -> TrafficPolicy:
        return TrafficPolicy(
            stable=self.stable,
            canary=self.canary,
            canary_weight=self.canary_weight,
            shadows=tuple(self.shadows),
            shadow_sample_rate=self.shadow_sample_rate,
            sticky_header=self.sticky_header,
            sticky_parameter=self.sticky_parameter,
        )


class ShadowBody(_Body):
    versions: list[str] = Field(description="Shadow versions; an empty list turns shadowing off.")
    sample_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="Share (0-1) of requests copied; null keeps the current rate."
    )

    def change(self, current: TrafficPolicy) -> TrafficPolicy:
        """The current policy with these shadows (and rate, when given); the rest is kept."""
        rate = current.shadow_sample_rate if self.sample_rate is None else self.sample_rate
        return replace(current, shadows=tuple(self.versions), shadow_sample_rate=rate)


class CheckBody(_Body):
    name: str = Field(min_length=1, description="Check: error_ratio, latency_p99_ratio, shadow_agreement, ...")
    threshold: float = Field(description="The check's limit (its meaning depends on the check).")
    min_requests: int = Field(20, ge=1, description="Fewer canary requests than this in a window: no data.")


class RolloutBody(_Body):
    canary: str = Field(min_length=1, description="Version to roll out; must be loaded.")
    steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
        min_length=1,
        description="Canary weight (percent, rising, each in (0, 100]) at each step.",
    )
    interval_s: float = Field(60.0, gt=0, description="Seconds in one analysis window.")
    failure_threshold: int = Field(2, ge=1, description="Failed windows that roll the canary back.")
    max_no_data_windows: int = Field(5, ge=1, description="Consecutive windows without data that count as a failure.")
    checks: list[CheckBody] | None = Field(
        None, description="Analysis checks; null: error_ratio and latency_p99_ratio."
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError(f"every step must be in (0, 100], got {steps}")
        if steps != sorted(steps):
            raise ValueError(f"steps must rise, got {steps}")
        return steps

    def to_spec(self) -> RolloutSpec:
        checks = (
            DEFAULT_CHECKS
            if self.checks is None
            else tuple(CheckSpec(c.name, c.threshold, c.min_requests) for c in self.checks)
        )
        return RolloutSpec(
            canary=self.canary,
            steps=tuple(self.steps),
            interval_s=self.interval_s,
            failure_threshold=self.failure_threshold,
            max_no_data_windows=self.max_no_data_windows,
            checks=checks,
        )


# -- the router -----------------------------------------------------------------------------


def admin_actor_dependency(auth: AdminAuth, ready: Callable[[], bool] | None) -> Callable[..., Any]:
    """The FastAPI dependency every /admin route uses: the token's name, or 401/403 (503 while starting)."""

    async def admin_actor(
        request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> str:
        try:
            actor = auth.authenticate(request.headers.get("authorization"))
        except Unauthorized as exc:
            raise StarletteHTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        if ready is not None and not ready():
            raise ModelNotReady("the gateway is starting or draining; try again when it is ready")
        return actor

    return admin_actor


def admin_router() -> APIRouter:
    return APIRouter(
        prefix="/admin",
        tags=["admin"],
        responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
    )


def build_admin_router(control: ControlPlane, auth: AdminAuth, ready: Callable[[], bool] | None = None) -> APIRouter:
    """The /admin routes over `control`, guarded by `auth`. `ready`: False while the gateway starts."""
    Actor = Annotated[str, Security(admin_actor_dependency(auth, ready))]
    router = admin_router()

    def policy_json(model: str) -> dict[str, Any]:
        return policy_to_json(control.policy(model))

    # -- models and versions --

    @router.get("/models", summary="Every model: versions, states, roles, weights, policy, rollout")
    async def list_models(actor: Actor) -> dict[str, Any]:
        return {"models": control.models_view()}

    @router.get("/models/{model}", summary="One model: versions, states, roles, weights, policy, rollout")
    async def get_model(actor: Actor, model: ModelName) -> dict[str, Any]:
        return control.model_view(model)

    @router.post("/models/{model}/versions/{version}/load", summary="Load a version from the repository")
    async def load_version(actor: Actor, model: ModelName, version: VersionName) -> dict[str, Any]:
        return await control.load_version(actor, model, version)

    @router.post(
        "/models/{model}/versions/{version}/unload",
        summary="Drain and unload a version (refused while the policy or a rollout uses it)",
    )
    async def unload_version(actor: Actor, model: ModelName, version: VersionName) -> dict[str, Any]:
        return await control.unload_version(actor, model, version)

    # -- traffic --

    @router.get("/models/{model}/traffic", summary="The model's traffic policy")
    async def get_traffic(actor: Actor, model: ModelName) -> dict[str, Any]:
        control.registry.get_model(model)
        return policy_json(model)

    @router.put("/models/{model}/traffic", summary="Replace the model's traffic policy")
    async def put_traffic(actor: Actor, model: ModelName, body: TrafficBody) -> dict[str, Any]:
        return policy_to_json(await control.set_policy(actor, model, body.to_policy()))

    @router.patch("/models/{model}/traffic", summary="Change some fields of the model's traffic policy")
    async def patch_traffic(actor: Actor, model: ModelName, body: TrafficBody) -> dict[str, Any]:
        return policy_to_json(await control.update_policy(actor, model, body.patch()))

    @router.post("/models/{model}/shadow", summary="Set the shadow versions, keeping the rest of the policy")
    async def set_shadow(actor: Actor, model: ModelName, body: ShadowBody) -> dict[str, Any]:
        return policy_to_json(await control.update_policy(actor, model, body.change))

    @router.post("/models/{model}/promote", summary="Make the canary the stable version now")
    async def promote(actor: Actor, model: ModelName) -> dict[str, Any]:
        return policy_to_json(await control.promote(actor, model))

    @router.post("/models/{model}/rollback", summary="Send all traffic back to the stable version now")
    async def rollback(actor: Actor, model: ModelName) -> dict[str, Any]:
        return policy_to_json(await control.rollback(actor, model))

    # -- rollouts --

    @router.post("/models/{model}/rollout", status_code=201, summary="Start a progressive canary rollout")
    async def start_rollout(actor: Actor, model: ModelName, body: RolloutBody) -> dict[str, Any]:
        return (await control.start_rollout(actor, model, body.to_spec())).to_json()

    @router.get("/models/{model}/rollout", summary="The active rollout, else the last one (404 if none)")
    async def get_rollout(actor: Actor, model: ModelName) -> dict[str, Any]:
        state = await control.last_rollout(model)
        if state is None:
            raise StarletteHTTPException(404, f"model '{model}' has had no rollout")
        return state.to_json()

    @router.post("/models/{model}/rollout/pause", summary="Hold the rollout at its current weight")
    async def pause_rollout(actor: Actor, model: ModelName) -> dict[str, Any]:
        return (await control.pause_rollout(actor, model)).to_json()

    @router.post("/models/{model}/rollout/resume", summary="Resume a paused rollout (a fresh analysis window)")
    async def resume_rollout(actor: Actor, model: ModelName) -> dict[str, Any]:
        return (await control.resume_rollout(actor, model)).to_json()

    @router.post("/models/{model}/rollout/abort", summary="Stop the rollout and send all traffic to stable")
    async def abort_rollout(actor: Actor, model: ModelName) -> dict[str, Any]:
        return (await control.abort_rollout(actor, model)).to_json()

    # -- audit --

    @router.get("/audit", summary="Audit events, newest first")
    async def audit(
        actor: Actor,
        model: Annotated[str | None, Query(description="Only this model's events.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many events.")] = 100,
        before_id: Annotated[
            int | None, Query(ge=1, le=2**63 - 1, description="Next page: events older than this id.")
        ] = None,
    ) -> dict[str, Any]:
        events = await control.audit_events(model, limit, before_id)
        return {
            "events": [e.to_json() for e in events],
            "next_before_id": events[-1].id if len(events) == limit else None,
        }

    return router
