"""Triton's model configuration extension: what Sluice really does with a version, as Triton's `ModelConfig`.

perf_analyzer and other Triton tools read the configuration before they send anything: `max_batch_size`,
the inputs and outputs (dims without the batch dimension when the model batches, as Triton writes them),
the dynamic batcher's delay and queue, the instance group. Everything here is read from the loaded
version: its runtime's signature and placement, and the batching in force (a model with no batch
dimension is served one request at a time, so its `max_batch_size` is 0 whatever config.yaml says).
Sluice's own settings, which Triton's schema has no field for, are under `parameters`.

The result is the JSON form Triton's HTTP endpoint answers (field names as in model_config.proto); the
gRPC adapter parses the same dict into `ModelConfigResponse`.
"""

from __future__ import annotations

from typing import Any

from gateway.serving.registry import ServedVersion
from runtimes.tensors import DataType, TensorSpec

DEFAULT_PLACEMENT = "worker"
"""Where a version runs when its runtime says nothing else: a session in each worker process."""


def triton_datatype(datatype: DataType) -> str:
    """Triton's DataType enum is TYPE_<V2 name> for every tensor type Sluice serves (only BYTES, which it does
    not, would be TYPE_STRING)."""
    return f"TYPE_{datatype.value}"


def model_config(served: ServedVersion) -> dict[str, Any]:
    """The version's configuration; the version must be loaded (its runtime known)."""
    runtime = served.runtime
    assert runtime is not None, "model_config needs a loaded version"
    info, batching, config = runtime.info, served.batching, served.config
    batched = batching.max_batch_size > 0
    result: dict[str, Any] = {
        "name": served.model,
        "platform": info.platform,
        "backend": "onnxruntime" if config.runtime.kind == "onnx" else "",
        "version_policy": _version_policy(served),
        "max_batch_size": batching.max_batch_size,
        "input": [_tensor(s, batched) for s in runtime.signature.inputs],
        "output": [_tensor(s, batched) for s in runtime.signature.outputs],
        "instance_group": [_instance_group(served)],
        "parameters": {k: {"string_value": v} for k, v in sorted(_parameters(served).items())},
    }
    if batched:
        queue_policy: dict[str, Any] = {"max_queue_size": batching.queue_capacity}
        if batching.default_timeout_s is not None:
            queue_policy |= {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(batching.default_timeout_s * 1e6),
                "allow_timeout_override": True,
            }
        result["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(batching.max_queue_delay_s * 1e6),
            "default_queue_policy": queue_policy,
        }
    return result


def _tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = list(spec.shape[1:] if batched else spec.shape)
    return {"name": spec.name, "data_type": triton_datatype(spec.datatype), "dims": dims}


def _version_policy(served: ServedVersion) -> dict[str, Any]:
    policy = served.config.version_policy
    if policy.all:
        return {"all": {}}
    if policy.specific is not None:
        return {"specific": {"versions": sorted(policy.specific)}}
    return {"latest": {"num_versions": policy.latest or 1}}


def _instance_group(served: ServedVersion) -> dict[str, Any]:
    """Triton's instances are the model's concurrent executions: Sluice's `max_concurrent_batches` (or the
    instances a placement reports, per device); the kind is where the runtime really runs, on which GPUs."""
    assert served.runtime is not None
    info = served.runtime.info
    count = info.parameters.get("instances")
    group: dict[str, Any] = {
        "name": f"{served.model}_{served.version}",
        "count": int(count) if count and count.isdigit() else served.batching.max_concurrent_batches,
    }
    if info.device.startswith("cuda"):
        group["kind"] = "KIND_GPU"
        devices = info.parameters.get("devices", info.device).split(",")  # several: `runtime.devices`
        ordinals = [d.partition(":")[2] for d in devices]
        if all(o.isdigit() for o in ordinals):
            group["gpus"] = [int(o) for o in ordinals]
    elif info.device == "remote":
        group["kind"] = "KIND_MODEL"  # the remote server decides where it runs
    else:
        group["kind"] = "KIND_CPU"
    return group


def _parameters(served: ServedVersion) -> dict[str, str]:
    """Sluice's settings of the version that Triton's schema has no field for, and the runtime's own facts."""
    assert served.runtime is not None
    info, batching, config = served.runtime.info, served.batching, served.config
    params = {
        **info.parameters,
        "version": served.version,
        "execution_provider": info.execution_provider,
        "device": info.device,
        "placement": info.parameters.get("placement", DEFAULT_PLACEMENT),
        "runtime_kind": config.runtime.kind,
        "max_queue_delay_ms": f"{batching.max_queue_delay_s * 1000:g}",
        "queue_capacity": str(batching.queue_capacity),
        "max_concurrent_batches": str(batching.max_concurrent_batches),
        "greedy": str(batching.greedy).lower(),
        "timeout_ms": "none" if batching.default_timeout_s is None else f"{batching.default_timeout_s * 1000:g}",
        "inline_max_ms": f"{config.runtime.inline_max_ms:g}",
        "logging_sample_rate": f"{config.logging.rate:g}",
    }
    if config.runtime.kind == "onnx":
        params["intra_op_threads"] = str(config.runtime.intra_op_threads)
    if config.watchdog.call_timeout_ms is not None:
        params["watchdog_call_timeout_ms"] = f"{config.watchdog.call_timeout_ms:g}"
    if served.sha256:
        params["sha256"] = served.sha256
    return params
