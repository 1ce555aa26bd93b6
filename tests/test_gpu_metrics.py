"""GPU metrics: present through NVML where a GPU is, absent (and harmless) where none is; placement labels
(which device a version runs on; the gateway's GPU memory split into workers' and runtime processes').

This machine has no GPU, so what runs here is the absent path with the real `nvidia-ml-py` installed (no
driver: nvmlInit fails), the absent path without the package, and the pure shaping of readings. Where NVML
does find a device, the first test checks the real figures instead.
"""

from __future__ import annotations

import subprocess
import sys

from prometheus_client import CollectorRegistry, generate_latest

from gateway.observability.gpu import GpuReading, families, register_gpu_collector
from gateway.observability.metrics import GPU_METRIC_NAMES, STANDARD_METRIC_NAMES, GatewayMetrics
from runtimes.onnx import device_of
from tests.helpers import ROOT, metric_value


def _nvml_sees_a_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return bool(pynvml.nvmlDeviceGetCount())
    except Exception:
        return False


def test_gpu_figures_follow_what_nvml_finds() -> None:
    registry = CollectorRegistry()
    collector = register_gpu_collector(registry.register)
    text = generate_latest(registry).decode()
    if not _nvml_sees_a_gpu():
        assert collector is None
        assert "sluice_gpu" not in text
        return
    # On a GPU machine: every device reports memory, within bounds.
    assert collector is not None
    for name in ("sluice_gpu_memory_total_bytes", "sluice_gpu_memory_used_bytes"):
        assert metric_value(text, name, gpu="0") > 0
    assert metric_value(text, "sluice_gpu_memory_used_bytes", gpu="0") <= metric_value(
        text, "sluice_gpu_memory_total_bytes", gpu="0"
    )
    assert 0.0 <= metric_value(text, "sluice_gpu_utilization_ratio", gpu="0") <= 1.0


def test_without_the_nvml_package_nothing_registers_and_nothing_fails() -> None:
    code = (
        "import sys; sys.modules['pynvml'] = None\n"  # what Python does for a package that is not installed
        "from prometheus_client import CollectorRegistry, generate_latest\n"
        "from gateway.observability.gpu import register_gpu_collector\n"
        "r = CollectorRegistry()\n"
        "assert register_gpu_collector(r.register) is None\n"
        "assert b'sluice_gpu' not in generate_latest(r)\n"
        "print('absent ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "absent ok" in out.stdout, out.stderr


def test_readings_shape_into_labelled_gauges_in_base_units() -> None:
    readings = [
        GpuReading(0, "GPU-aaaa", "NVIDIA H200", 0.42, 10 * 2**30, 141 * 2**30, 3 * 2**30),
        GpuReading(1, "GPU-bbbb", "NVIDIA H200", None, 2**30, 141 * 2**30, None),  # MIG: no utilisation
        # The device placement: the runtime process holds the weights, the workers hold (almost) nothing.
        GpuReading(2, "GPU-cccc", "NVIDIA H200", 0.9, 5 * 2**30, 141 * 2**30, 5 * 2**30, {"device": 5 * 2**30}),
    ]
    registry = CollectorRegistry()

    class Fixed:
        def collect(self) -> list[object]:
            return list(families(readings))

    registry.register(Fixed())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert metric_value(text, "sluice_gpu_utilization_ratio", gpu="0", uuid="GPU-aaaa", gpu_name="NVIDIA H200") == 0.42
    assert 'sluice_gpu_utilization_ratio{gpu="1"' not in text
    assert metric_value(text, "sluice_gpu_memory_used_bytes", gpu="1") == 2**30
    assert metric_value(text, "sluice_gpu_memory_total_bytes", gpu="0") == 141 * 2**30
    assert metric_value(text, "sluice_gpu_process_memory_bytes", gpu="0") == 3 * 2**30
    assert metric_value(text, "sluice_gpu_process_memory_bytes", gpu="1") == 0
    # Split by placement: both series for every GPU (two values, not one per process).
    assert metric_value(text, "sluice_gpu_process_memory_bytes", gpu="0", placement="worker") == 3 * 2**30
    assert metric_value(text, "sluice_gpu_process_memory_bytes", gpu="0", placement="device") == 0
    assert metric_value(text, "sluice_gpu_process_memory_bytes", gpu="2", placement="device") == 5 * 2**30
    assert metric_value(text, "sluice_gpu_process_memory_bytes", gpu="2", placement="worker") == 0
    assert text.count("sluice_gpu_process_memory_bytes{") == 2 * len(readings)
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert declared == set(GPU_METRIC_NAMES)
    assert families([]) == []  # no device, no families (not empty ones)


def test_device_placement_from_onnx_runtime_provider_options() -> None:
    # The shape InferenceSession.get_provider_options() returns: provider -> {option: str}.
    assert device_of("CPUExecutionProvider", {"CPUExecutionProvider": {}}) == "cpu"
    assert device_of("CUDAExecutionProvider", {"CUDAExecutionProvider": {"device_id": "1"}}) == "cuda:1"
    assert device_of("TensorrtExecutionProvider", {"TensorrtExecutionProvider": {"device_id": "0"}}) == "cuda:0"
    assert device_of("CUDAExecutionProvider", {}) == "cuda:0"


def test_process_platform_and_gc_collectors_are_on_every_gateway_registry() -> None:
    text = generate_latest(GatewayMetrics().registry).decode()
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    for name in STANDARD_METRIC_NAMES:
        assert name in declared or name.removesuffix("_total") in declared, name
    assert metric_value(text, "process_resident_memory_bytes") > 0
