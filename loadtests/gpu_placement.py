"""The device placement on a GPU: run this on a machine with an NVIDIA GPU, 16 cores and onnxruntime-gpu.

    python -m loadtests.gpu_placement --out gpu-placement          # under 10 minutes

Not yet run on a GPU (none was at hand when it was written): its figures are the proof still owed.

For the reference MLP and the wide MLP of `loadtests/gpu_check.py`, it starts `sluice serve --workers 16` twice,
once with `runtime.placement: worker` (16 sessions: 16 CUDA contexts and 16 copies of the weights on the GPU)
and once with `device` (one runtime process, one session), both on `execution_providers: [cuda]`, and runs wrk
against them in turn at 64 and 256 connections (`loadtests.placement_bench`: req/s, rows/s, p50/p99, rows per
runtime call, memory). While each run lasts, NVML is sampled every 0.2 s: GPU utilisation (mean), memory used
on the device (max), and the GPU memory of the gateway's own processes with how many of them hold a context.

The baseline is raw ONNX Runtime CUDA in this process (`OnnxRuntime.load`, providers [cuda]): rows/s of
`session.run` at the batch size the device placement formed at 256 connections, and at 64 and 256 rows. The
issue's target: the gateway at 256 connections delivers at least 80% of raw rows/s at the batch size it forms,
with one model copy on the GPU. Everything lands in `--out` as `results.json` and `results.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.gpu_check import build_wide_mlp
from loadtests.modes import BenchError
from loadtests.placement_bench import MODELS, PLACEMENTS, Side, bench_model, markdown, tree_rss_bytes
from loadtests.report import machine_facts

SAMPLE_S = 0.2
TARGET_OF_RAW = 0.8


def _tree(root: int) -> set[int]:
    """The pids of a process and its descendants."""
    import os

    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, parent in parents.items() if parent == pid and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return tree


@contextlib.contextmanager
def nvml_sampled(side: Side, connections: int) -> Iterator[dict[str, Any]]:
    """Sample GPU 0 through NVML while a run lasts; the figures are filled in when it ends."""
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert side.gateway.proc is not None
    tree = _tree(side.gateway.proc.pid)
    util: list[float] = []
    used: list[int] = []
    own: list[tuple[int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_S):
            with contextlib.suppress(pynvml.NVMLError):
                util.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
                used.append(int(pynvml.nvmlDeviceGetMemoryInfo(handle).used))
                procs = [
                    p for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid in tree and p.usedGpuMemory
                ]
                own.append((len(procs), sum(int(p.usedGpuMemory) for p in procs)))

    thread = threading.Thread(target=sample, daemon=True)
    figures: dict[str, Any] = {}
    thread.start()
    try:
        yield figures
    finally:
        stop.set()
        thread.join()
        figures.update(
            gpu_util=statistics.mean(util) if util else None,
            gpu_mem_used_mib=max(used) / 2**20 if used else None,
            gateway_gpu_mem_mib=max(m for _, m in own) / 2**20 if own else None,
            gpu_processes=max(n for n, _ in own) if own else None,
            rss_mib=tree_rss_bytes(side.gateway.proc.pid) / 2**20 if side.gateway.proc else None,
        )


def raw_rows_per_s(model_path: Path, batches: Sequence[int], seconds: float = 3.0) -> dict[int, float]:
    """Raw ONNX Runtime CUDA: rows/s of `session.run` at each batch size (median of 5 timed loops)."""
    from runtimes.onnx import OnnxRuntime

    runtime = OnnxRuntime.load(model_path, providers=["cuda"])
    if runtime.info.execution_provider != "CUDAExecutionProvider":
        raise BenchError(f"ONNX Runtime runs {runtime.info.execution_provider}, not CUDA: install onnxruntime-gpu")
    out = {}
    for batch in batches:
        x = {"input": np.random.default_rng(1).standard_normal((batch, 32)).astype(np.float32)}
        for _ in range(20):
            runtime.run(x)
        calls = 1
        while True:  # calibrate a loop of about seconds / 5
            t0 = time.perf_counter()
            for _ in range(calls):
                runtime.run(x)
            if time.perf_counter() - t0 >= seconds / 5 or calls >= 1 << 20:
                break
            calls *= 2
        loops = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls):
                runtime.run(x)
            loops.append(batch * calls / (time.perf_counter() - t0))
        out[batch] = statistics.median(loops)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.gpu_placement", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md and the logs")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--connections", type=lambda s: [int(c) for c in s.split(",")], default=[64, 256])
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--hidden", type=int, default=4096)
    args = p.parse_args(argv)
    args.provider, args.rows, args.models = "cuda", 1, list(MODELS)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # any NVML failure means: no GPU to measure here
        print(f"error: NVML is not available ({exc}): this needs an NVIDIA GPU and nvidia-ml-py", file=sys.stderr)
        return 2
    from gateway.cli.demo import build_reference_mlp

    started = time.monotonic()
    results: dict[str, Any] = {}
    raw: dict[str, dict[int, float]] = {}
    checks: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sluice-gpu-placement-") as tmp:
            for model in args.models:
                print(f"[{model}] --workers {args.workers}, worker and device placement on CUDA", flush=True)
                results[model] = bench_model(args, model, Path(tmp), during=nvml_sampled)
                path = Path(tmp) / f"raw-{model}.onnx"
                build_reference_mlp(path) if model == "reference" else build_wide_mlp(path, hidden=args.hidden)
                top = max(args.connections)
                formed = results[model]["device"][top]["mean_batch"] or 1.0
                batch = max(1, round(formed))
                raw[model] = raw_rows_per_s(path, sorted({batch, 64, 256}))
                share = results[model]["device"][top]["rows_per_s"] / raw[model][batch]
                checks.append(
                    {"model": model, "connections": top, "batch": batch, "of_raw": share, "met": share >= TARGET_OF_RAW}
                )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    facts = machine_facts()
    command = "python -m loadtests.gpu_placement " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = {
        "command": command,
        "machine": facts,
        "seconds": time.monotonic() - started,
        "results": results,
        "raw_cuda_rows_per_s": raw,
        "target": checks,
    }
    (args.out / "results.json").write_text(json.dumps(doc, indent=2))
    lines = [markdown(results, facts, command), "## GPU (NVML, GPU 0)", ""]
    lines += ["| model | conns | placement | GPU util | GPU mem MiB | gateway GPU MiB | processes on GPU |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for model, by_placement in results.items():
        for c in args.connections:
            for placement in PLACEMENTS:
                m = by_placement[placement][c]
                cells = [m.get("gpu_util"), m.get("gpu_mem_used_mib"), m.get("gateway_gpu_mem_mib")]
                shown = " | ".join("–" if v is None else f"{v:,.2f}" for v in cells)
                lines.append(f"| {model} | {c} | {placement} | {shown} | {m.get('gpu_processes')} |")
    lines += ["", "## Against raw ONNX Runtime CUDA", ""]
    for model, by_batch in raw.items():
        lines.append(f"- {model}: " + ", ".join(f"batch {b}: {r:,.0f} rows/s" for b, r in by_batch.items()))
    for check in checks:
        lines.append(
            f"- {check['model']} at {check['connections']} connections: {check['of_raw']:.2f} of raw at batch "
            f"{check['batch']} (target {TARGET_OF_RAW}): {'met' if check['met'] else 'NOT met'}"
        )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
