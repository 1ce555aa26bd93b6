"""Build the demo model repository with the `onnx` package: no downloads, deterministic weights.

- `mlp` (versions 1 and 2): the reference benchmark MLP, float32 [batch, 32] -> 256 -> 256 -> 8.
- `classifier` (versions 1 and 2): the same shape with softmax "probabilities" and an INT64 "label".
- `multi_io`: three inputs and three outputs of different datatypes.
- `dtypes`: one Identity per V2 datatype ONNX Runtime takes, to prove every datatype end to end.
- `fixed`: no batch dimension (shape [3, 4]), so it runs unbatched.
- `churn` (versions 1, 2 and 3): a tabular classifier with named features and monitoring (drift,
  accuracy, a drift trigger) for the console's tour (`gateway.cli.tour`): version 2 is closer to the
  ground truth than 1, and version 3 fails on about a fifth of its inputs (a canary to roll back).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
DTYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
}


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sluice-demo")
    model.ir_version = 8
    return model


def _mlp_graph(seed: int, head: str) -> onnx.GraphProto:
    rng = np.random.default_rng(seed)
    sizes = [(32, 256), (256, 256), (256, 8)]
    inits, nodes = [], []
    prev = "input"
    for i, (fan_in, fan_out) in enumerate(sizes):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = f"h{i}" if i < len(sizes) - 1 else ("output" if head == "logits" else "logits")
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"{out}_pre" if i < 2 else out]))
        if i < len(sizes) - 1:
            nodes.append(helper.make_node("Relu", [f"{out}_pre"], [out]))
        prev = out
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 32])
    if head == "logits":
        outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8])]
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
        nodes.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0))
        outputs = [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ]
    return helper.make_graph(nodes, f"mlp_{head}", [inp], outputs, initializer=inits)


def build_reference_mlp(path: Path, seed: int = 1234) -> Path:
    """The MLP of the reference throughput test (shared/bench): weights from default_rng(seed), opset 13."""
    return _save(_model(_mlp_graph(seed, "logits")), path)


def build_classifier(path: Path, seed: int) -> Path:
    return _save(_model(_mlp_graph(seed, "classifier")), path)


def build_multi_io(path: Path) -> Path:
    """features FP32 [b,4], offsets INT64 [b,4], mask BOOL [b,4] -> scores FP64, count INT32 [b], inverted BOOL."""
    nodes = [
        helper.make_node("Cast", ["offsets"], ["offsets_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["features", "offsets_f"], ["summed"]),
        helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["summed", "mask_f"], ["masked"]),
        helper.make_node("Cast", ["masked"], ["scores"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["mask"], ["mask_i"], to=TensorProto.INT32),
        helper.make_node("ReduceSum", ["mask_i", "axes"], ["count"], keepdims=0),
        helper.make_node("Not", ["mask"], ["inverted"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi_io",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("offsets", TensorProto.INT64, ["batch", 4]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 4]),
        ],
        [
            helper.make_tensor_value_info("scores", TensorProto.DOUBLE, ["batch", 4]),
            helper.make_tensor_value_info("count", TensorProto.INT32, ["batch"]),
            helper.make_tensor_value_info("inverted", TensorProto.BOOL, ["batch", 4]),
        ],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    return _save(_model(graph), path)


def build_dtypes(path: Path) -> Path:
    """One Identity per datatype: in_<DT> [b, 3] -> out_<DT> [b, 3]."""
    nodes, inputs, outputs = [], [], []
    for name, proto in DTYPES.items():
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", proto, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", proto, ["batch", 3]))
    return _save(_model(helper.make_graph(nodes, "dtypes", inputs, outputs)), path)


def build_fixed(path: Path) -> Path:
    """x FP32 [3, 4] -> y = 2x, no batch dimension."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        initializer=[numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    return _save(_model(graph), path)


MLP_CONFIG = """\
# Served by `sluice demo`. Every key is optional; see gateway/model_config.py.
batching:
  max_batch_size: 64
  max_queue_delay_ms: 2
  queue_capacity: 2048
timeout_ms: 10000
version_policy:
  all: true
"""


CHURN_FEATURES = (
    "tenure",
    "monthly_charges",
    "total_charges",
    "support_calls",
    "contract_months",
    "age",
    "income",
    "usage",
)
CHURN_TRUTH = np.array([-1.2, 0.9, -0.4, 1.1, -0.8, 0.1, -0.3, 0.5], dtype=np.float32)
"""The ground truth the tour labels churn predictions by: churn (class 1) when features @ truth > 0."""
CHURN_NOISE = {"1": 0.45, "2": 0.12, "3": 0.12, "4": 0.08}
"""How far each version's weights are from the truth: version 2 is the better model; version 4, which the tour
writes into the repository as a retrained model, is better still."""
TOUR_VERSION = "4"
"""The version of churn the tour writes into the repository and the delivery policy takes from there."""


def build_churn(path: Path, version: str, *, trap: bool = False) -> Path:
    """features FP32 [b, 8] -> probabilities FP32 [b, 2] (softmax of +-w/2 . x), w = truth + seeded noise.

    `trap`: ONNX Runtime fails on rows whose |tenure| >= 1.2 (a Gather past the end of a one-row table),
    about 23% of standard normal inputs; the answer of every other row is unchanged.
    """
    rng = np.random.default_rng(100 + int(version))
    w = CHURN_TRUTH + rng.standard_normal(len(CHURN_TRUTH)).astype(np.float32) * CHURN_NOISE[version]
    weights = np.stack([-w / 2, w / 2], axis=1).astype(np.float32)
    inits = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.zeros(2, np.float32), "b")]
    nodes = [helper.make_node("Gemm", ["features", "w", "b"], ["logits"])]
    if trap:
        inits += [
            numpy_helper.from_array(np.zeros((1, 1), np.float32), "table"),
            numpy_helper.from_array(np.array([0], np.int64), "s0"),
            numpy_helper.from_array(np.array([1], np.int64), "s1"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array(1.2, np.float32), "scale"),
        ]
        nodes += [
            helper.make_node("Slice", ["features", "s0", "s1", "axis1"], ["first"]),
            helper.make_node("Abs", ["first"], ["magnitude"]),
            helper.make_node("Div", ["magnitude", "scale"], ["scaled"]),
            helper.make_node("Floor", ["scaled"], ["floored"]),
            helper.make_node("Cast", ["floored"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "index"], ["trapped"], axis=0),  # [b, 1, 1]; fails past row 0
            helper.make_node("ReduceSum", ["trapped"], ["zero"], keepdims=0),
            helper.make_node("Add", ["logits", "zero"], ["logits_checked"]),
            helper.make_node("Softmax", ["logits_checked"], ["probabilities"], axis=1),
        ]
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "churn",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", len(CHURN_FEATURES)])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializer=inits,
    )
    return _save(_model(graph), path)


def churn_config(monitor_schedule_s: float) -> str:
    return f"""\
# Served by `sluice demo`; the console's tour (sluice demo --tour) drives it. See gateway/serving/model_config.py.
batching:
  max_batch_size: 64
  max_queue_delay_ms: 2
timeout_ms: 10000
version_policy:
  all: true
monitoring:
  task: classification
  feature_names: [{", ".join(CHURN_FEATURES)}]
  drift: {{schedule_s: {monitor_schedule_s:g}, window_rows: 400, reference_rows: 400, min_rows: 100, num_method: ks}}
  accuracy: {{schedule_s: {monitor_schedule_s:g}, window_s: 600, min_labels: 20}}
  triggers:
    - {{name: input-drift, figure: drift_share, threshold: 0.3, windows: 2, cooldown_s: 600, roles: [stable]}}
delivery:  # a version a repository sync finds: shadowed behind the gate, then rolled out (the tour's last act)
  on_new_version: rollout
  shadow: {{sample_rate: 1.0, min_requests: 200, min_agreement: 0.7, timeout_s: 300}}
  rollout:
    steps: [25, 100]
    interval_s: 10
    checks: [error_ratio, shadow_agreement]
    thresholds: {{shadow_agreement: 0.7}}
    failure_threshold: 3
"""


def build_demo_repository(repo: Path, *, monitor_schedule_s: float = 0.0) -> Path:
    """Write the demo repository (idempotent: rewrites the files). `monitor_schedule_s`: how often churn's
    drift and accuracy run on their own (0: only when asked, as the tests want)."""
    repo.mkdir(parents=True, exist_ok=True)
    for version, seed in (("1", 1234), ("2", 4321)):
        build_reference_mlp(repo / "mlp" / version / "model.onnx", seed)
        build_classifier(repo / "classifier" / version / "model.onnx", seed)
    (repo / "mlp" / "config.yaml").write_text(MLP_CONFIG)
    (repo / "classifier" / "config.yaml").write_text(MLP_CONFIG)
    build_multi_io(repo / "multi_io" / "1" / "model.onnx")
    build_dtypes(repo / "dtypes" / "1" / "model.onnx")
    build_fixed(repo / "fixed" / "1" / "model.onnx")
    for version in ("1", "2", "3"):
        build_churn(repo / "churn" / version / "model.onnx", version, trap=version == "3")
    (repo / "churn" / "config.yaml").write_text(churn_config(monitor_schedule_s))
    shutil.rmtree(repo / "churn" / TOUR_VERSION, ignore_errors=True)  # the tour's upload: delivered anew each run
    return repo
