"""GPU figures for Prometheus, read through NVML (the `nvidia-ml-py` package) at scrape time.

Operators sharing GPUs between models ask first who is on which GPU and how busy it is: this
collector exports each device's utilisation and memory, and how much of it this gateway holds;
`sluice_runtime_device` (set by the registry) says which versions run on which CUDA device.

NVML is optional. Without the package, without a driver, or with no device, `register_gpu_collector`
registers nothing and the metrics are simply absent: nothing fails and nothing is logged above debug.
A device that stops answering mid-run (a GPU fallen off the bus) costs its figures for that scrape, not
the scrape. The work is split at one seam: `read_devices` talks to NVML and returns plain readings;
`families` shapes readings into metric families without touching NVML.

A GPU's memory held by this gateway is split by `placement`: `device` for the runtime processes of the device
placement (`gateway.serving.device_host`: one CUDA context and one copy of the weights per GPU), `worker` for
every other process of the gateway (workers holding their own sessions). Utilisation is the device's alone
and cannot be split.

NVML numbers devices in PCI bus order; CUDA ordinals follow `CUDA_DEVICE_ORDER` (fastest first unless set to
PCI_BUS_ID) and `CUDA_VISIBLE_DEVICES`. The two agree when `CUDA_DEVICE_ORDER=PCI_BUS_ID` and every device is
visible; the `uuid` label names a device without that ambiguity.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.observability.metrics import GPU_MEMORY_TOTAL, GPU_MEMORY_USED, GPU_PROCESS_MEMORY, GPU_UTILIZATION

log = logging.getLogger(__name__)

_LABELS = ("gpu", "uuid", "gpu_name")
PLACEMENTS = ("worker", "device")


@dataclass(frozen=True)
class GpuReading:
    """One device at one scrape, in NVML's own units turned into base units (ratios, bytes)."""

    index: int
    uuid: str
    name: str
    utilization: float | None
    """Share of the last sample period in which a kernel ran (NVML's `gpu` rate / 100); None if unsupported."""
    memory_used: int
    memory_total: int
    process_memory: int | None
    """Bytes this gateway's processes (this process group: the supervisor, its workers and runtime processes)
    hold on the device; None when they hold none or NVML cannot say (some containers)."""
    by_placement: Mapping[str, int] = field(default_factory=dict)
    """`process_memory` split by placement ('worker', 'device'); empty: all of it is the workers'."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _in_group(pid: int, group: int) -> bool:
    try:
        return os.getpgid(pid) == group
    except OSError:  # gone, or another container's process
        return False


def read_devices(nvml: Any, group: int, device_pids: Collection[int] = ()) -> list[GpuReading]:
    """Read every device through an initialised `pynvml` module; a device that errors is left out.
    `group`: the process group whose GPU memory counts as this gateway's; `device_pids`: those of its processes
    that are runtime processes of the device placement."""
    readings = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                utilization: float | None = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            except nvml.NVMLError:
                utilization = None  # e.g. MIG instances report no utilisation
            own = [
                (p.pid, p.usedGpuMemory)
                for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                if p.usedGpuMemory is not None and _in_group(p.pid, group)
            ]
            split = dict.fromkeys(PLACEMENTS, 0)
            for pid, used in own:
                split["device" if pid in device_pids else "worker"] += int(used)
            readings.append(
                GpuReading(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    utilization=utilization,
                    memory_used=int(memory.used),
                    memory_total=int(memory.total),
                    process_memory=sum(split.values()) if own else None,
                    by_placement=split if own else {},
                )
            )
        except nvml.NVMLError as exc:
            log.debug("NVML: device %d unreadable: %s", index, exc)
    return readings


def families(readings: Iterable[GpuReading]) -> list[Metric]:
    """Shape readings into gauge families labelled gpu (NVML index), uuid and gpu_name (the product); the
    gateway's own memory also by placement (worker, device)."""
    util = GaugeMetricFamily(GPU_UTILIZATION, "Share of time a kernel ran on the GPU (NVML).", labels=_LABELS)
    used = GaugeMetricFamily(GPU_MEMORY_USED, "GPU memory in use, by every process (NVML).", labels=_LABELS)
    total = GaugeMetricFamily(GPU_MEMORY_TOTAL, "GPU memory installed (NVML).", labels=_LABELS)
    own = GaugeMetricFamily(
        GPU_PROCESS_MEMORY,
        "GPU memory this gateway's processes hold (NVML), by placement: workers' or runtime processes'.",
        labels=(*_LABELS, "placement"),
    )
    for r in readings:
        labels = (str(r.index), r.uuid, r.name)
        if r.utilization is not None:
            util.add_metric(labels, r.utilization)
        used.add_metric(labels, r.memory_used)
        total.add_metric(labels, r.memory_total)
        split = r.by_placement or {"worker": r.process_memory or 0}
        for placement in PLACEMENTS:
            own.add_metric((*labels, placement), split.get(placement, 0))
    return [f for f in (util, used, total, own) if f.samples]


class GpuCollector(Collector):
    """Reads NVML on every scrape (a few hundred microseconds a device); never raises into the scrape."""

    def __init__(self, nvml: Any, device_pids: Callable[[], Collection[int]] = frozenset) -> None:
        self._nvml = nvml
        self._group = os.getpgid(0)
        self._device_pids = device_pids

    def collect(self) -> Iterator[Metric]:
        try:
            readings = read_devices(self._nvml, self._group, self._device_pids())
        except Exception as exc:  # observers never break the scrape that reads them
            log.warning("NVML read failed: %s", exc)
            return
        yield from families(readings)


def register_gpu_collector(
    register: Callable[[Collector], None], device_pids: Callable[[], Collection[int]] = frozenset
) -> GpuCollector | None:
    """Register the collector when NVML answers and sees at least one GPU; else register nothing.

    `register` is `GatewayMetrics.register_machine_collector` (so with workers a scrape shows the GPUs once),
    or a registry's `register`; `device_pids()`: the runtime processes' pids now (the `placement` label)."""
    try:
        import pynvml
    except ImportError:
        log.debug("GPU metrics off: nvidia-ml-py is not installed")
        return None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:
        log.debug("GPU metrics off: NVML unavailable (%s)", exc)
        return None
    if count == 0:
        log.debug("GPU metrics off: NVML sees no GPU")
        return None
    collector = GpuCollector(pynvml, device_pids)
    register(collector)
    log.info("GPU metrics on: %d device(s)", count)
    return collector
