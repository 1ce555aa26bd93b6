"""Triton's repository load and unload, over HTTP and gRPC: admin changes, taken as the admin API takes them.

`POST /v2/repository/models/{m}/load|unload` and gRPC `RepositoryModelLoad|Unload` change what serves, so
they need an admin token (`Authorization: Bearer <token>`, the HTTP header or the gRPC metadata
`authorization`); its name is the actor the control plane audits. Without a token: 401 / UNAUTHENTICATED;
a wrong one: 403 / PERMISSION_DENIED; either way nothing changes. The change is the control plane's
`load_model` / `unload_model` (each version as `sluice load` / `sluice unload` does it); a replica that
does not lead passes the call to the leader over HTTP, as the admin API is forwarded, so the leader checks
the token and audits it, whichever protocol the caller used.

Triton's load may carry a model configuration or files to load instead of the repository's: Sluice loads
only what its repository holds, so those parameters are refused (400, naming the parameter).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.admin.api import ModelName, bearer
from gateway.admin.auth import AdminAuth
from gateway.admin.forward import FORWARDED, LeaderForwarder
from gateway.control.leader import LeaderElection
from gateway.control.plane import ControlPlane
from gateway.errors import ControlPlaneUnavailable, InvalidInput, ModelNotReady, Unauthorized, error_for_status
from gateway.serving.openapi_v2 import errors

_ACCEPTED = {"load": frozenset(), "unload": frozenset({"unload_dependents"})}
"""Parameters each call takes (Sluice has no ensembles, so `unload_dependents` changes nothing)."""


class RepositoryControl:
    """Load and unload behind both adapters: `gateway.serving.triton_index.RepositoryActions`."""

    def __init__(
        self,
        control: ControlPlane,
        auth: AdminAuth,
        election: LeaderElection,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.control = control
        self.auth = auth
        self.election = election
        self.ready = ready
        self.forwarder: LeaderForwarder | None = None
        """What passes a change to the leader (set once the HTTP application that it wraps is built)."""

    async def load(
        self, authorization: str | None, model: str, parameters: dict[str, Any], *, forwarded: bool = False
    ) -> None:
        actor = self._admit(authorization, "load", parameters)
        if self.election.is_leader:
            await self.control.load_model(actor, model)
        else:
            await self._forward("load", authorization, model, parameters, forwarded)

    async def unload(
        self, authorization: str | None, model: str, parameters: dict[str, Any], *, forwarded: bool = False
    ) -> None:
        actor = self._admit(authorization, "unload", parameters)
        if self.election.is_leader:
            await self.control.unload_model(actor, model)
        else:
            await self._forward("unload", authorization, model, parameters, forwarded)

    def _admit(self, authorization: str | None, action: str, parameters: dict[str, Any]) -> str:
        """The token's name, checked first: a caller without a valid token learns nothing else."""
        actor = self.auth.authenticate(authorization)
        for key in parameters:
            if key not in _ACCEPTED[action]:
                raise InvalidInput(
                    f"parameters.{key} is not supported by {action}: Sluice serves the versions its model repository "
                    "holds (add them there; the version policy selects which load)"
                )
        if self.ready is not None and not self.ready():
            raise ModelNotReady("the gateway is starting or draining; try again when it is ready")
        return actor

    async def _forward(
        self, action: str, authorization: str | None, model: str, parameters: dict[str, Any], forwarded: bool
    ) -> None:
        if forwarded or self.forwarder is None:  # never pass a change on twice: the sender thought this one led
            raise ControlPlaneUnavailable("this replica no longer leads the control plane; retry")
        body = orjson.dumps({"parameters": parameters})
        path = f"/v2/repository/models/{quote(model, safe='')}/{action}"
        status, message = await self.forwarder.call_leader(path, authorization, body)
        if status != 200:
            raise error_for_status(status, message)


def parameters_of(body: bytes) -> dict[str, Any]:
    """The `parameters` object of a load or unload body (an empty body has none)."""
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    unknown = sorted(set(document) - {"parameters"})
    if unknown:
        raise InvalidInput(f"unknown field(s) {', '.join(unknown)}: the body takes only 'parameters'")
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    return parameters


def build_repository_router(repository: RepositoryControl) -> APIRouter:
    """POST /v2/repository/models/{model}/load and /unload (the index, read-only, is with the data plane's routes)."""
    router = APIRouter(prefix="/v2/repository", tags=["repository"], responses=errors(400, 401, 403, 404, 409, 503))

    async def call(request: Request, model: str, action: str) -> dict[str, Any]:
        forwarded = FORWARDED in request.headers
        authorization = request.headers.get("authorization")
        try:
            repository.auth.authenticate(authorization)  # a caller without a valid token learns nothing else
            parameters = parameters_of(await request.body())
            if action == "load":
                await repository.load(authorization, model, parameters, forwarded=forwarded)
            else:
                await repository.unload(authorization, model, parameters, forwarded=forwarded)
        except Unauthorized as exc:
            raise StarletteHTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        return {}

    @router.post("/models/{model}/load", summary="Load the versions the model's version policy selects (admin)")
    async def load(
        request: Request,
        model: ModelName,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> dict[str, Any]:
        return await call(request, model, "load")

    @router.post("/models/{model}/unload", summary="Drain and unload every version of the model (admin)")
    async def unload(
        request: Request,
        model: ModelName,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> dict[str, Any]:
        return await call(request, model, "unload")

    return router
