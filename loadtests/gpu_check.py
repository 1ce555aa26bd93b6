"""Prove the CUDA path and take raw GPU figures: run this on a machine with an NVIDIA GPU and onnxruntime-gpu.

    python -m loadtests.gpu_check --out gpu-results

1. Loads the reference MLP through Sluice's own loader (`runtimes.onnx.OnnxRuntime.load`, providers
   `cuda, cpu`) and reads back the provider ONNX Runtime really runs (`get_providers()`); exits 1 unless it
   is CUDAExecutionProvider, since onnxruntime-gpu falls back to CPU with only a log line.
2. Checks that the CUDA answers equal CPU ONNX Runtime's on the same rows (float32 tolerance).
3. Times raw `session.run` on CUDA against CPU (one intra-op thread, as in the reference test, and all cores)
   at several batch sizes, for the reference MLP (32→64→64→8, launch-bound on a GPU) and a wide MLP
   (32→4096→4096→8, compute-bound), median of interleaved repeats: where a GPU pays off, and where it does not.

The end-to-end figure on a GPU is the reference test itself: `python -m loadtests.bench --provider cuda`.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from onnx import TensorProto, helper, numpy_helper, save

from gateway.cli.demo import build_reference_mlp
from runtimes.onnx import OnnxRuntime, import_onnxruntime

BATCHES = (1, 32, 256, 1024)


def build_wide_mlp(path: Path, hidden: int = 4096, seed: int = 7) -> Path:
    """32 → hidden → hidden → 8 with ReLU: enough arithmetic per row for a GPU to matter."""
    rng = np.random.default_rng(seed)
    dims = [32, hidden, hidden, 8]
    nodes, inits, x = [], [], "input"
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        w = (rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)).astype(np.float32)
        b = np.zeros(d_out, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        y = "output" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [y if y == "output" else f"g{i}"]))
        if y != "output":
            nodes.append(helper.make_node("Relu", [f"g{i}"], [y]))
        x = y
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))
    return path


def session(path: Path, provider: str, threads: int) -> Any:
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=options, providers=[provider])
    if sess.get_providers()[0] != provider:
        raise SystemExit(f"{path.name}: asked for {provider}, ONNX Runtime runs {sess.get_providers()[0]}")
    return sess


def time_runs(sessions: dict[str, Any], x: np.ndarray, budget_s: float = 1.0) -> dict[str, float]:
    """Median µs per call for each session, interleaved in rounds so drift hits all of them alike."""
    name = sessions[next(iter(sessions))].get_inputs()[0].name
    for s in sessions.values():  # warm-up: CUDA kernels, arenas
        for _ in range(5):
            s.run(None, {name: x})
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    deadline = time.monotonic() + budget_s * len(sessions)
    rounds = 0
    while rounds < 9 or (time.monotonic() < deadline and rounds < 2000):
        for k, s in sessions.items():
            t0 = time.perf_counter_ns()
            s.run(None, {name: x})
            samples[k].append((time.perf_counter_ns() - t0) / 1e3)
        rounds += 1
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("gpu-results"))
    p.add_argument("--cpu-threads", type=int, default=0, help="threads for the all-cores CPU session (0: ORT default)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ort = import_onnxruntime()
    report: dict[str, Any] = {"onnxruntime": ort.__version__, "available": ort.get_available_providers()}
    with tempfile.TemporaryDirectory() as tmp:
        ref = build_reference_mlp(Path(tmp) / "mlp.onnx")
        wide = build_wide_mlp(Path(tmp) / "wide.onnx")
        runtime = OnnxRuntime.load(ref, providers=("cuda", "cpu"))
        report["sluice_loader_provider"] = runtime.info.execution_provider
        print(f"Sluice's loader runs the reference MLP on {runtime.info.execution_provider}", flush=True)
        if runtime.info.execution_provider != "CUDAExecutionProvider":
            (args.out / "gpu_check.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
            return 1
        rows = np.random.default_rng(42).standard_normal((256, 32)).astype(np.float32)
        report["models"] = {}
        for label, path in (("reference_mlp", ref), ("wide_mlp_4096", wide)):
            sessions = {
                "cuda": session(path, "CUDAExecutionProvider", 1),
                "cpu_1_thread": session(path, "CPUExecutionProvider", 1),
                "cpu_all_cores": session(path, "CPUExecutionProvider", args.cpu_threads),
            }
            got = runtime.run({"input": rows})["output"] if label == "reference_mlp" else None
            cuda_out = sessions["cuda"].run(None, {"input": rows})[0]
            cpu_out = sessions["cpu_1_thread"].run(None, {"input": rows})[0]
            diff = float(np.max(np.abs(cuda_out - cpu_out)))
            scale = float(np.max(np.abs(cpu_out)))
            ok = diff <= 1e-3 * max(1.0, scale) and (got is None or np.array_equal(got, cuda_out))
            entry: dict[str, Any] = {"max_abs_diff_vs_cpu": diff, "max_abs_output": scale, "equal": ok, "batches": {}}
            print(f"{label}: CUDA vs CPU max |diff| {diff:.2e} (outputs up to {scale:.2f}) -> {'OK' if ok else 'FAIL'}")
            if not ok:
                report["models"][label] = entry
                (args.out / "gpu_check.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
                return 1
            for b in BATCHES:
                x = np.random.default_rng(b).standard_normal((b, 32)).astype(np.float32)
                us = time_runs(sessions, x)
                entry["batches"][str(b)] = {k: {"us": v, "rows_per_s": b * 1e6 / v} for k, v in us.items()}
                print(
                    f"  batch {b:>5}: "
                    + ", ".join(f"{k} {v:,.0f} µs ({b * 1e6 / v:,.0f} rows/s)" for k, v in us.items()),
                    flush=True,
                )
            report["models"][label] = entry
    (args.out / "gpu_check.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
