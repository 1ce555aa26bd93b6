"""The monitor's admin routes: run drift or accuracy now, list stored runs, fetch Evidently's HTML report.

Same bearer tokens as the rest of /admin. Runs go through `MonitorService.run`, so an on-demand run
is stored, exported and judged by the trigger rules exactly as a scheduled one is.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Security
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.admin.api import ModelName, admin_actor_dependency, admin_router
from gateway.admin.auth import AdminAuth
from gateway.control.monitor_service import MonitorService
from gateway.errors import ModelNotFound

Kind = Literal["drift", "accuracy"]
RunId = Annotated[int, Path(ge=1, le=2**63 - 1, description="A stored run's id.")]
"""Bounded: a larger number is a 422, not a database error (the store's ids are 64-bit)."""


class RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, description="One version; null: the stable and the canary.")


def run_json(run: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in run.items()}


def build_monitor_router(
    monitor: MonitorService, auth: AdminAuth, ready: Callable[[], bool] | None = None
) -> APIRouter:
    Actor = Annotated[str, Security(admin_actor_dependency(auth, ready))]
    router = admin_router()

    @router.post("/models/{model}/monitor/{kind}", summary="Run drift or accuracy now (stored, exported, judged)")
    async def run_now(
        actor: Actor, model: ModelName, kind: Annotated[Kind, Path()], body: RunBody | None = None
    ) -> dict[str, Any]:
        runs = await monitor.run(model, kind, version=body.version if body else None, actor=actor)
        return {"runs": [run_json(r) for r in runs]}

    @router.get("/models/{model}/monitor/runs", summary="Stored drift and accuracy runs, newest first")
    async def list_runs(
        actor: Actor,
        model: ModelName,
        kind: Annotated[Kind | None, Query(description="Only drift or only accuracy runs.")] = None,
        version: Annotated[str | None, Query(description="Only this version's runs.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        monitor.control.registry.get_model(model)
        runs = monitor.store.monitor_runs(model, kind=kind, version=version, limit=limit)
        return {"runs": [run_json(r) for r in runs]}

    @router.get("/models/{model}/monitor/runs/{run_id}", summary="One stored run")
    async def get_run(actor: Actor, model: ModelName, run_id: RunId) -> dict[str, Any]:
        run = monitor.store.monitor_run(model, run_id)
        if run is None:
            raise ModelNotFound(f"model '{model}' has no monitor run {run_id}")
        return run_json(run)

    @router.get(
        "/models/{model}/monitor/runs/{run_id}/report",
        summary="Evidently's HTML report of a drift run",
        response_class=FileResponse,
    )
    async def report(actor: Actor, model: ModelName, run_id: RunId) -> FileResponse:
        path = monitor.report_file(model, run_id)
        if path is None:
            raise ModelNotFound(f"model '{model}' has no report for monitor run {run_id} (not a drift run, or pruned)")
        return FileResponse(path, media_type="text/html")

    return router
