"""Where a version's session runs: `runtime.placement` resolved against the machine and the worker count.

`worker`: every worker process loads its own session (right for the CPU and small models: a batch costs
microseconds in the worker, more over any hop). `device`: one runtime process per device hosts the version and
every worker sends it whole batches over shared memory (`gateway.serving.device_runtime`), so the workers'
batches merge into one call and a GPU holds one copy of the weights. `auto` picks `device` only where that is
what wins: the version runs on a GPU and more than one worker serves it.

A `device` version runs on one runtime process per entry of `runtime.devices` (`all`: every visible GPU), and
each worker spreads its batches over them (`gateway.serving.spread`). On the CPU each ordinal is a CPU runtime
process of its own: `cpu` for 0 (the one every CPU version shares by default), `cpu:<n>` for the others.

Pure: the available execution providers, the worker count and the visible GPUs come in as arguments, so the
rule is tested without a GPU (`visible_gpus` is the one function here that looks at the machine).
`HOSTS_ENV` is how a supervisor tells its workers where the runtime processes listen.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.serving.model_config import RuntimeSection
from runtimes.onnx import PROVIDER_NAMES

HOSTS_ENV = "SLUICE_DEVICE_HOSTS"
"""JSON set by whoever started the runtime processes: {"workers": N, "sockets": {device: unix socket path}}."""

_GPU_PROVIDERS = frozenset(("CUDAExecutionProvider", "TensorrtExecutionProvider"))


@dataclass(frozen=True)
class Choice:
    placement: Literal["worker", "device"]
    devices: tuple[str, ...]
    """'cpu', 'cpu:<n>' or 'cuda:<ordinal>': the runtime processes a `device` placement uses, in order (the
    first is what `worker` runs on)."""

    @property
    def device(self) -> str:
        return self.devices[0]


def device_name(on_gpu: bool, ordinal: int) -> str:
    """The name of a runtime process (and the `device` label of its metrics)."""
    if on_gpu:
        return f"cuda:{ordinal}"
    return "cpu" if ordinal == 0 else f"cpu:{ordinal}"


def ordinal_of(device: str) -> int:
    """The ordinal in a device name: 'cuda:1' -> 1, 'cpu' -> 0."""
    _, _, n = device.partition(":")
    return int(n) if n.isdigit() else 0


def count_visible(cuda_visible_devices: str | None, nvml_count: int | None) -> int:
    """How many GPUs CUDA numbers here: `CUDA_VISIBLE_DEVICES` when set (its entries), else NVML's count, else
    one (what a GPU provider that is installed but not countable still has)."""
    if cuda_visible_devices is not None:
        return len([d for d in cuda_visible_devices.split(",") if d.strip()])
    return nvml_count if nvml_count else 1


def visible_gpus() -> int:
    """The GPUs `devices: all` spreads over on this machine (see `count_visible`)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return count_visible(visible, None)
    nvml_count = None
    try:
        import pynvml

        pynvml.nvmlInit()
        nvml_count = int(pynvml.nvmlDeviceGetCount())
    except Exception:  # no package, no driver: CUDA_VISIBLE_DEVICES or one
        nvml_count = None
    return count_visible(None, nvml_count)


def first_provider(requested: Iterable[str], available: Collection[str]) -> str:
    """The execution provider ONNX Runtime will run: the first requested one that is installed (else the CPU's)."""
    for p in requested:
        name = PROVIDER_NAMES.get(p.lower(), p)
        if name in available:
            return name
    return "CPUExecutionProvider"


def resolve(runtime: RuntimeSection, workers: int, available: Collection[str], gpus: int = 1) -> Choice:
    """The placement and devices of one model's versions, with `workers` worker processes on this machine,
    `available` the execution providers ONNX Runtime has here (`onnxruntime.get_available_providers()`) and
    `gpus` the GPUs CUDA numbers (`visible_gpus`; read for `devices: all` alone)."""
    if runtime.kind != "onnx":
        return Choice("worker", ("remote",))
    on_gpu = first_provider(runtime.execution_providers, available) in _GPU_PROVIDERS
    every = list(range(max(1, gpus))) if on_gpu else [0]
    ordinals = every if runtime.devices == "all" else list(runtime.devices)
    devices = tuple(device_name(on_gpu, n) for n in ordinals)
    if runtime.placement == "device" or (runtime.placement == "auto" and on_gpu and workers > 1):
        return Choice("device", devices)
    return Choice("worker", devices[:1])


def devices_needed(
    runtimes: Iterable[RuntimeSection], workers: int, available: Collection[str], gpus: int = 1
) -> list[str]:
    """The devices that need a runtime process: those of every model placed on its device, in order."""
    devices = {
        d for rt in runtimes if (c := resolve(rt, workers, available, gpus)).placement == "device" for d in c.devices
    }
    return sorted(devices, key=lambda d: (d.partition(":")[0], ordinal_of(d)))


def wants_device(runtimes: Iterable[RuntimeSection]) -> bool:
    """Whether any model may be placed on its device (so the providers are worth asking ONNX Runtime for)."""
    return any(rt.kind == "onnx" and rt.placement != "worker" for rt in runtimes)


def wants_all(runtimes: Iterable[RuntimeSection]) -> bool:
    """Whether any model asks for `devices: all` (so the GPUs are worth counting)."""
    return any(rt.devices == "all" for rt in runtimes)


@dataclass(frozen=True)
class Hosts:
    """The runtime processes a worker may use: the device each serves and its unix socket; `gpus`: the GPUs
    `devices: all` meant when they were started (so a worker resolves a model to the same processes)."""

    workers: int = 1
    sockets: dict[str, str] | None = None
    gpus: int = 1

    def to_env(self) -> str:
        return json.dumps({"workers": self.workers, "sockets": self.sockets or {}, "gpus": self.gpus})

    @classmethod
    def from_env(cls) -> Hosts | None:
        raw = os.environ.get(HOSTS_ENV)
        if not raw:
            return None
        data = json.loads(raw)
        sockets = {str(k): str(v) for k, v in data["sockets"].items()}
        return cls(int(data["workers"]), sockets, int(data.get("gpus", 1)))
