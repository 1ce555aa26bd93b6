"""The ingress application, built once for the CLI's driver and for a KubeRay RayService alike.

A RayService names it in its `serveConfigV2` (`import_path: gateway.ray.app:build`, with `args`); Serve calls
`build` with those args, and takes every other setting from the SLUICE_* environment of the pods. Versions
are deployed by the ingress replicas themselves as they load them (`gateway.ray.runtime.RayPlacement`), so
the application needs nothing but the model repository, the ports and the PostgreSQL URL.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from gateway.observability.metrics import MULTIPROCESS_ENV
from gateway.ray.driver import check_settings
from gateway.ray.ingress import IngressServer
from gateway.ray.metrics_dir import new_metrics_dir
from gateway.settings import GatewaySettings


def ingress_application(settings: GatewaySettings, *, replicas: int, cpus: float, metrics_dir: str) -> Any:
    """The bound ingress application. Its replicas on one node share the ports, and `metrics_dir`, made for this
    run (`gateway.ray.metrics_dir`: one scrape shows them all, and nothing of an earlier run)."""
    deployment = serve.deployment(
        name="ingress",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus, "runtime_env": {"env_vars": {MULTIPROCESS_ENV: metrics_dir}}},
        max_ongoing_requests=4,  # its methods are for probes; requests come to its own servers
        health_check_period_s=2.0,
        graceful_shutdown_timeout_s=settings.drain_timeout_s + 10.0,
    )(IngressServer)
    return deployment.bind(settings)


def build(args: dict[str, Any]) -> Any:
    """Serve's application builder: `args` are GatewaySettings fields (model_repo, http_port, grpc_port, ...)
    over the SLUICE_* environment; refuses what Ray mode cannot run (SQLite, port 0)."""
    settings = GatewaySettings(**args)
    check_settings(settings)
    return ingress_application(
        settings, replicas=settings.ray_ingress_replicas, cpus=settings.ray_ingress_cpus, metrics_dir=new_metrics_dir()
    )
