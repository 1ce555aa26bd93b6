"""Names and options of the Serve applications `sluice serve --ray` deploys: one place, shared by the driver and
the ingress replicas (which deploy and remove version applications as versions are loaded and unloaded)."""

from __future__ import annotations

import re
from typing import Any

from gateway.serving.model_config import ModelConfig

INGRESS_APP = "sluice-ingress"
VERSION_APP_PREFIX = "sluice-version"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def version_app(model: str, version: str) -> str:
    """The Serve application of one model version."""
    return f"{VERSION_APP_PREFIX}.{_UNSAFE.sub('_', model)}.{_UNSAFE.sub('_', version)}"


def version_options(config: ModelConfig) -> dict[str, Any]:
    """`Deployment.options` for a version from its config.yaml: replicas or autoscaling, CPUs, GPUs, custom
    resources, the spread over nodes, and
    `max_ongoing_requests` from the batching config (Serve's default of 5 would cap the batches merged)."""
    ray = config.ray
    actor: dict[str, Any] = {"num_cpus": ray.num_cpus, "num_gpus": ray.num_gpus}
    if ray.resources:
        actor["resources"] = dict(ray.resources)
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": max(8, config.batching.queue_capacity),
        "health_check_period_s": 2.0,
        "graceful_shutdown_timeout_s": max(5.0, (config.timeout_ms or 30_000) / 1000.0),
    }
    if ray.autoscaling is not None:
        a = ray.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "initial_replicas": max(1, a.min_replicas),
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        }
    else:
        options["num_replicas"] = ray.num_replicas
    if ray.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = ray.max_replicas_per_node
    return options
