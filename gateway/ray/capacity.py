"""Whether the deployments `sluice serve --ray` starts with fit the cluster's CPUs, GPUs and custom resources.

Serve waits for ever for a replica that no node can hold: `serve.run` blocks, the gateway never gets ready, and
the reason is only in the Serve controller's log. A local Ray is all there will ever be, so the driver refuses
at start and names what asks for what; a cluster joined with `--ray-address` may still grow (an autoscaler adds
nodes), so there the same finding is a warning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.serving.model_config import ModelConfig

_SLACK = 1e-9
"""Ray adds fractional resources in binary floating point."""


@dataclass(frozen=True, slots=True)
class Demand:
    """What one deployment reserves at start: its replicas, each with the CPUs and GPUs of its actor."""

    name: str
    replicas: int
    cpus: float
    gpus: float
    custom: Mapping[str, float] = field(default_factory=dict)
    """Custom Ray resources each replica reserves (`ray.resources`)."""

    def each(self, resource: str) -> float:
        return self.cpus if resource == "CPU" else self.gpus if resource == "GPU" else self.custom.get(resource, 0.0)


def starting_demand(
    versions: Iterable[tuple[str, str, ModelConfig]], ingress_replicas: int, ingress_cpus: float
) -> list[Demand]:
    """The version deployments (`model/version` with its config) at their starting replicas, and the ingress.

    An autoscaled version starts at `max(1, min_replicas)` (its `initial_replicas`); growing past that later
    waits for room without holding the gateway up, so only the start is checked.
    """
    demand = []
    for model, version, config in versions:
        ray = config.ray
        replicas = max(1, ray.autoscaling.min_replicas) if ray.autoscaling is not None else ray.num_replicas
        demand.append(Demand(f"{model}/{version}", replicas, ray.num_cpus, ray.num_gpus, dict(ray.resources)))
    demand.append(Demand("ingress", ingress_replicas, ingress_cpus, 0.0))
    return demand


def shortfall(demand: Sequence[Demand], available: Mapping[str, float]) -> str | None:
    """Why `demand` cannot all be placed in a cluster with `available` resources (Ray's "CPU", "GPU" and custom
    ones), or None."""
    custom = sorted({name for d in demand for name in d.custom})
    for resource in ("CPU", "GPU", *custom):
        asks = [d for d in demand if d.each(resource) > 0]
        need = sum(d.replicas * d.each(resource) for d in asks)
        have = float(available.get(resource, 0.0))
        if need > have + _SLACK:
            parts = ", ".join(f"{d.name} {d.replicas} x {d.each(resource):g}" for d in asks)
            if resource in ("CPU", "GPU"):
                fix = (
                    f"Lower ray.num_{resource.lower()}s or the replicas in the models' config.yaml (or "
                    f"SLUICE_RAY_INGRESS_CPUS), or give Ray more {resource}s"
                    + (" (--ray-num-cpus)" if resource == "CPU" else "")
                )
            else:
                fix = f"Start nodes with it (ray start --resources '{{\"{resource}\": ...}}') or lower ray.resources"
            return (
                f"the deployments ask for {need:g} {resource}s at start ({parts}) and the Ray cluster has {have:g}: "
                f"Serve would wait for ever to place them. {fix}"
            )
    return None
