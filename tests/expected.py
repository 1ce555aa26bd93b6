"""An independent oracle for datatype names: the tests check the gateway against these tables,
not against the mapping in runtimes.tensors that the gateway itself uses."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}
V2_TO_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


RTOL, ATOL = 1e-5, 1e-6


@functools.cache
def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def session(repo: Path, model: str, version: str) -> ort.InferenceSession:
    return _session(str(repo / model / version / "model.onnx"))


def reference(repo: Path, model: str, version: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = session(repo, model, version)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))


def onnx_signature(repo: Path, model: str, version: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs as V2 metadata should report them, read from the ONNX graph itself."""
    sess = session(repo, model, version)

    def spec(arg: Any) -> dict[str, Any]:
        shape = [d if isinstance(d, int) else -1 for d in arg.shape]
        return {"name": arg.name, "datatype": ORT_TO_V2[arg.type], "shape": shape}

    return [spec(i) for i in sess.get_inputs()], [spec(o) for o in sess.get_outputs()]
