"""Where a version's session runs: `runtime.placement` resolved against the machine and the worker count.

`worker`: every worker process loads its own session (right for the CPU and small models: a batch costs
microseconds in the worker, more over any hop). `device`: one runtime process per device hosts the version and
every worker sends it whole batches over shared memory (`gateway.serving.device_runtime`), so the workers'
batches merge into one call and a GPU holds one copy of the weights. `auto` picks `device` only where that is
what wins: the version runs on a GPU and more than one worker serves it.

Pure: the available execution providers and the worker count come in as arguments, so the rule is tested
without a GPU. `HOSTS_ENV` is how a supervisor tells its workers where the runtime processes listen.
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
    device: str
    """'cpu' or 'cuda:<ordinal>': the runtime process a `device` placement uses (and what `worker` runs on)."""


def first_provider(requested: Iterable[str], available: Collection[str]) -> str:
    """The execution provider ONNX Runtime will run: the first requested one that is installed (else the CPU's)."""
    for p in requested:
        name = PROVIDER_NAMES.get(p.lower(), p)
        if name in available:
            return name
    return "CPUExecutionProvider"


def resolve(runtime: RuntimeSection, workers: int, available: Collection[str]) -> Choice:
    """The placement and device of one model's versions, with `workers` worker processes on this machine and
    `available` the execution providers ONNX Runtime has here (`onnxruntime.get_available_providers()`)."""
    if runtime.kind != "onnx":
        return Choice("worker", "remote")
    on_gpu = first_provider(runtime.execution_providers, available) in _GPU_PROVIDERS
    ordinal = runtime.devices[0] if isinstance(runtime.devices, list) else 0
    device = f"cuda:{ordinal}" if on_gpu else "cpu"
    if runtime.placement == "device" or (runtime.placement == "auto" and on_gpu and workers > 1):
        return Choice("device", device)
    return Choice("worker", device)


def devices_needed(runtimes: Iterable[RuntimeSection], workers: int, available: Collection[str]) -> list[str]:
    """The devices that need a runtime process: those of every model placed on its device, in order."""
    devices = {c.device for rt in runtimes if (c := resolve(rt, workers, available)).placement == "device"}
    return sorted(devices)


def wants_device(runtimes: Iterable[RuntimeSection]) -> bool:
    """Whether any model may be placed on its device (so the providers are worth asking ONNX Runtime for)."""
    return any(rt.kind == "onnx" and rt.placement != "worker" for rt in runtimes)


@dataclass(frozen=True)
class Hosts:
    """The runtime processes a worker may use: the device each serves and its unix socket."""

    workers: int = 1
    sockets: dict[str, str] | None = None

    def to_env(self) -> str:
        return json.dumps({"workers": self.workers, "sockets": self.sockets or {}})

    @classmethod
    def from_env(cls) -> Hosts | None:
        raw = os.environ.get(HOSTS_ENV)
        if not raw:
            return None
        data = json.loads(raw)
        return cls(int(data["workers"]), {str(k): str(v) for k, v in data["sockets"].items()})
