"""Which deployments fit a Ray cluster at start (pure: no Ray needed)."""

from __future__ import annotations

from gateway.ray.capacity import Demand, shortfall, starting_demand
from gateway.serving.model_config import ModelConfig


def _config(**ray: object) -> ModelConfig:
    return ModelConfig.model_validate({"ray": ray})


def test_the_benchmarks_two_replica_mode_at_half_a_cpu_each_does_not_fit_two_cpus_and_says_who_asks() -> None:
    versions = [("mlp", v, _config(num_cpus=0.5, num_replicas=2)) for v in ("1", "2")]
    problem = shortfall(starting_demand(versions, ingress_replicas=1, ingress_cpus=0.5), {"CPU": 2.0})
    assert problem is not None
    assert problem.startswith(
        "the deployments ask for 2.5 CPUs at start (mlp/1 2 x 0.5, mlp/2 2 x 0.5, ingress 1 x 0.5) and the Ray "
        "cluster has 2: Serve would wait for ever"
    )
    assert "--ray-num-cpus" in problem


def test_a_quarter_cpu_each_fits_and_fractions_that_add_up_exactly_fit() -> None:
    versions = [("mlp", v, _config(num_cpus=0.25, num_replicas=2)) for v in ("1", "2")]
    assert shortfall(starting_demand(versions, 1, 0.5), {"CPU": 2.0}) is None
    tenths = [Demand(f"m/{i}", 1, 0.1, 0.0) for i in range(10)]  # 0.1 x 10 is 0.9999999999999999 in floats
    assert shortfall(tenths, {"CPU": 1.0}) is None


def test_an_autoscaled_version_counts_its_starting_replicas_not_its_maximum() -> None:
    scaled = _config(num_cpus=1.0, autoscaling={"min_replicas": 0, "max_replicas": 8})
    (version, ingress) = starting_demand([("m", "1", scaled)], ingress_replicas=2, ingress_cpus=0.25)
    assert version == Demand("m/1", 1, 1.0, 0.0)
    assert ingress == Demand("ingress", 2, 0.25, 0.0)
    assert shortfall([version, ingress], {"CPU": 1.5}) is None


def test_gpus_are_checked_too_and_a_cluster_without_any_has_none() -> None:
    versions = [("vision", "1", _config(num_cpus=0.0, num_gpus=0.5, num_replicas=3))]
    demand = starting_demand(versions, 1, 0.0)
    assert shortfall(demand, {"CPU": 16.0}) == (
        "the deployments ask for 1.5 GPUs at start (vision/1 3 x 0.5) and the Ray cluster has 0: Serve would wait "
        "for ever to place them. Lower ray.num_gpus or the replicas in the models' config.yaml (or "
        "SLUICE_RAY_INGRESS_CPUS), or give Ray more GPUs"
    )
    assert shortfall(demand, {"CPU": 16.0, "GPU": 2.0}) is None


def test_custom_resources_are_checked_too_and_spread_options_reach_the_deployment() -> None:
    from gateway.ray.naming import version_options

    big = _config(num_cpus=0.0, num_replicas=2, resources={"big_memory": 1}, max_replicas_per_node=1)
    demand = starting_demand([("lm", "1", big)], 1, 0.25)
    problem = shortfall(demand, {"CPU": 4.0, "big_memory": 1.0})
    assert problem is not None and problem.startswith(
        "the deployments ask for 2 big_memorys at start (lm/1 2 x 1) and the Ray cluster has 1"
    )
    assert "ray start --resources" in problem
    assert shortfall(demand, {"CPU": 4.0, "big_memory": 2.0}) is None
    options = version_options(big)
    assert options["ray_actor_options"]["resources"] == {"big_memory": 1.0}
    assert options["max_replicas_per_node"] == 1
    assert "resources" not in version_options(_config())["ray_actor_options"]


def test_resources_that_are_not_custom_are_refused_naming_the_key() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"ray\.resources\.CPU: custom resources only"):
        _config(resources={"CPU": 1})
    with pytest.raises(ValidationError, match=r"ray\.resources\.fast: custom resources only"):
        _config(resources={"fast": 0})
