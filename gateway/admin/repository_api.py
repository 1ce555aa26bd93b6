"""The admin routes of the model repository: where it is, its cache, a sync (new and removed versions), and the
deliveries of new versions by each model's policy."""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime (see admin/api.py).

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Security

from gateway.admin.api import ModelName, admin_actor_dependency, admin_router
from gateway.admin.auth import AdminAuth
from gateway.control.delivery import delivery_view
from gateway.control.repository_sync import RepositorySync


def build_repository_sync_router(
    sync: RepositorySync,
    status: Callable[[], dict[str, Any]],
    auth: AdminAuth,
    ready: Callable[[], bool] | None = None,
) -> APIRouter:
    """`status()`: the repository's location (a URL never carries credentials), cache figures and poll period."""
    Actor = Annotated[str, Security(admin_actor_dependency(auth, ready))]
    router = admin_router()

    @router.get("/repository", summary="The model repository: location, cache, poll period, last sync")
    async def get_repository(actor: Actor) -> dict[str, Any]:
        return {**status(), "last_sync": sync.last.to_json() if sync.last else None}

    @router.post(
        "/repository/sync",
        summary="Sync the repository now: load new versions and unload removed ones, as each version_policy says",
    )
    async def sync_repository(actor: Actor) -> dict[str, Any]:
        return (await sync.run(actor)).to_json()

    @router.get(
        "/models/{model}/delivery",
        summary="The model's delivery of a new version (shadow, rollout, outcome) and its recent deliveries",
    )
    async def get_delivery(actor: Actor, model: ModelName) -> dict[str, Any]:
        sync.control.registry.get_model(model)  # 404 for a model the gateway does not serve
        delivery = sync.delivery
        if delivery is None:
            return {"model": model, "delivery": None, "history": []}
        history = await delivery.history(model)
        current = delivery.delivery(model)
        return {
            "model": model,
            "policy": sync.control.registry.get_model(model).config.delivery.model_dump(),
            "delivery": delivery_view(current or (history[0] if history else None)),
            "history": [delivery_view(d) for d in history],
        }

    return router
