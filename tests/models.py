"""Small real ONNX models that tests build on the spot (the demo ones live in gateway/demo.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_slow(path: Path, matmuls: int = 8, n: int = 512) -> Path:
    """y = x for x FP32 [batch, 1], after `matmuls` n*n matrix products that depend on x.

    The products depend on the input, so ONNX Runtime cannot fold them away at load time:
    every call really costs that compute. Used to hold requests in flight.
    """
    w = (np.eye(n, dtype=np.float32) * 0.5 + 0.5 / n).astype(np.float32)
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Expand", ["s", "square"], ["m0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "w"], [f"m{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"m{matmuls}"], ["t"], keepdims=0),
        helper.make_node("Mul", ["t", "zero"], ["t0"]),
        helper.make_node("Add", ["x", "t0"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([n, n], dtype=np.int64), "square"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_tabular(path: Path, features: int = 6, classes: int = 3, seed: int = 0, scale: float = 1.0) -> Path:
    """A linear classifier on `features` float32 columns: input [batch, features] -> scores [batch, classes].
    `scale`: multiplies the weights (a positive one keeps every answer's top class, a negative one reverses it)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((features, classes)) * scale
    return build_linear(path, w, np.zeros(classes))


def build_linear(path: Path, w: np.ndarray, b: np.ndarray) -> Path:
    """The linear classifier `input @ w + b` as ONNX: input [batch, features] -> scores [batch, classes]; what a
    trainer exports once it has fitted `w` and `b`."""
    features, classes = w.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["scores"])],
        "tabular",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(w.astype(np.float32), "w"), numpy_helper.from_array(b.astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_lookup(path: Path, rows: int, slow_matmuls: int = 0) -> Path:
    """out = table[idx] for idx INT64 [b, 1]; ONNX Runtime raises for idx >= rows. Optionally slow."""
    table = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    nodes = [helper.make_node("Gather", ["table", "idx"], ["g"], axis=0)]
    inits = [numpy_helper.from_array(table, "table")]
    if slow_matmuls:
        n = 384
        inits += [
            numpy_helper.from_array(np.eye(n, dtype=np.float32), "w"),
            numpy_helper.from_array(np.array([n, n], dtype=np.int64), "square"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ]
        nodes += [
            helper.make_node("Cast", ["idx"], ["idx_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["idx_f"], ["s"], keepdims=0),
            helper.make_node("Expand", ["s", "square"], ["m0"]),
        ]
        nodes += [helper.make_node("MatMul", [f"m{i}", "w"], [f"m{i + 1}"]) for i in range(slow_matmuls)]
        nodes += [
            helper.make_node("ReduceMean", [f"m{slow_matmuls}"], ["t"], keepdims=0),
            helper.make_node("Mul", ["t", "zero"], ["t0"]),
            helper.make_node("Add", ["g", "t0"], ["out"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["g"], ["out"]))
    graph = helper.make_graph(
        nodes,
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1, 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


HANG_THRESHOLD = 999.0
"""`build_hang`'s model hangs on a request holding a value above this."""


def build_hang(path: Path) -> Path:
    """y = x for x FP32 [batch, 1]; a batch holding a value above HANG_THRESHOLD never returns.

    A real ONNX model, nothing mocked: a Loop whose trip count is 10^15 when the batch's largest value
    is above the threshold (0 otherwise), each iteration adding one to a scalar that feeds the output, so
    ONNX Runtime cannot skip it. ONNX Runtime checks its terminate flag between the Loop's iterations,
    so `RunOptions.terminate` stops such a call from another thread, as the gateway's watchdog does.
    """
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["s_in", "one"], ["s_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, []),
        ],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
        helper.make_node("Greater", ["top", "threshold"], ["hot"]),
        helper.make_node("Cast", ["hot"], ["hot_i"], to=TensorProto.INT64),
        helper.make_node("Mul", ["hot_i", "forever"], ["trips"]),
        helper.make_node("Loop", ["trips", "true", "zero"], ["spun"], body=body),
        helper.make_node("Mul", ["spun", "zero"], ["nil"]),
        helper.make_node("Add", ["x", "nil"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "hang",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [
            numpy_helper.from_array(np.array(HANG_THRESHOLD, np.float32), "threshold"),
            numpy_helper.from_array(np.array(10**15, np.int64), "forever"),
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
