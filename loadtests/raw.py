"""The in-process baseline: raw ONNX Runtime on the same model, and the V2 JSON codec's own cost, interleaved."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadtests.modes import MODEL, PROVIDERS, BenchError
from loadtests.wrk import decode_row


def _calibrate(fn: Callable[[], object], loop_s: float) -> int:
    """Calls per timing loop so that one loop lasts about `loop_s`."""
    for _ in range(50):
        fn()
    n = 1
    while True:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter_ns() - t0
        if elapsed >= loop_s * 1e9 / 4 or n >= 1 << 22:
            break
        n *= 2
    return max(1, int(n * (loop_s * 1e9) / max(elapsed, 1)))


def time_interleaved(
    fns: dict[str, Callable[[], object]], loops: int = 9, loop_s: float = 0.15
) -> dict[str, dict[str, float]]:
    """Median and min ns per call of each function, timed round-robin with time.perf_counter_ns.

    Round-robin, because this box is shared (another core, other processes, frequency changes): each
    function sees the same background in every round, so differences between them stay meaningful even
    when the absolute figures drift. The median is the headline; min is the "quiet machine" figure.
    """
    counts = {name: _calibrate(fn, loop_s) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(loops):
        for name, fn in fns.items():
            n = counts[name]
            t0 = time.perf_counter_ns()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter_ns() - t0) / n)
    return {
        name: {
            "median_ns": statistics.median(xs),
            "min_ns": min(xs),
            "calls_per_loop": counts[name],
            "loops": loops,
        }
        for name, xs in samples.items()
    }


def measure_raw(model_path: Path, body: bytes, provider: str = "cpu") -> dict[str, Any]:
    """Raw ONNX Runtime and JSON costs in this process, on the model and body the gateway serves."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(model_path), sess_options=so, providers=[PROVIDERS[provider]])
    if sess.get_providers()[0] != PROVIDERS[provider]:
        raise BenchError(f"ONNX Runtime runs {sess.get_providers()[0]}, not {PROVIDERS[provider]}")

    x1 = decode_row(body)
    x32 = np.random.default_rng(7).standard_normal((32, 32)).astype(np.float32)
    out1 = sess.run(["output"], {"input": x1})[0]

    def decode() -> object:
        t = orjson.loads(body)["inputs"][0]
        return np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])

    def encode() -> bytes:
        doc = {
            "model_name": MODEL,
            "model_version": "1",
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [1, 8], "data": out1.ravel()}],
        }
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)

    def full() -> bytes:
        t = orjson.loads(body)["inputs"][0]
        x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        y = sess.run(["output"], {"input": x})[0]
        doc = {
            "model_name": MODEL,
            "model_version": "1",
            "outputs": [{"name": "output", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel()}],
        }
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)

    timing = time_interleaved(
        {
            "b1": lambda: sess.run(["output"], {"input": x1}),
            "b32": lambda: sess.run(["output"], {"input": x32}),
            "decode": decode,
            "encode": encode,
            "inproc_request": full,
        }
    )
    b1, b32, dec, enc, end_to_end = (timing[k] for k in ("b1", "b32", "decode", "encode", "inproc_request"))
    b1_us = b1["median_ns"] / 1e3
    full_us = end_to_end["median_ns"] / 1e3
    return {
        "ort_b1_us": b1_us,
        "ort_b1_min_us": b1["min_ns"] / 1e3,
        "ort_b1_calls_per_s": 1e6 / b1_us,
        "ort_b32_us": b32["median_ns"] / 1e3,
        "ort_b32_rows_per_s": 32 * 1e9 / b32["median_ns"],
        "json_decode_us": dec["median_ns"] / 1e3,
        "json_encode_us": enc["median_ns"] / 1e3,
        "json_codec_us": (dec["median_ns"] + enc["median_ns"]) / 1e3,
        "inproc_request_us": full_us,
        "inproc_request_per_s": 1e6 / full_us,
        "expected_output": out1.tolist(),
        "timing": timing,
    }
