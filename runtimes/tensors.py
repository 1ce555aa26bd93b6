"""Tensor vocabulary shared by runtimes, adapters and validation.

The V2 / Open Inference Protocol names datatypes as strings ("FP32"); numpy and ONNX have
their own names. Keeping the one mapping here means a datatype is supported everywhere or
nowhere.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


class DataType(str, enum.Enum):
    """V2 tensor datatypes that ONNX Runtime can take (BYTES and BF16 are not numeric in numpy)."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"

    @property
    def numpy(self) -> np.dtype[np.generic]:
        return _TO_NUMPY[self]

    @property
    def itemsize(self) -> int:
        return int(_TO_NUMPY[self].itemsize)

    @classmethod
    def from_numpy(cls, dtype: np.dtype[np.generic]) -> DataType:
        try:
            return _FROM_NUMPY[np.dtype(dtype)]
        except KeyError:
            raise ValueError(f"numpy dtype {dtype} has no V2 datatype") from None

    @classmethod
    def from_onnx(cls, onnx_type: str) -> DataType:
        """Map an ONNX Runtime type string such as 'tensor(float)'."""
        try:
            return _FROM_ONNX[onnx_type]
        except KeyError:
            raise ValueError(f"ONNX type {onnx_type} is not supported by Sluice") from None


_TO_NUMPY: dict[DataType, np.dtype[np.generic]] = {
    DataType.BOOL: np.dtype(np.bool_),
    DataType.UINT8: np.dtype(np.uint8),
    DataType.UINT16: np.dtype(np.uint16),
    DataType.UINT32: np.dtype(np.uint32),
    DataType.UINT64: np.dtype(np.uint64),
    DataType.INT8: np.dtype(np.int8),
    DataType.INT16: np.dtype(np.int16),
    DataType.INT32: np.dtype(np.int32),
    DataType.INT64: np.dtype(np.int64),
    DataType.FP16: np.dtype(np.float16),
    DataType.FP32: np.dtype(np.float32),
    DataType.FP64: np.dtype(np.float64),
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}
_FROM_ONNX = {
    "tensor(bool)": DataType.BOOL,
    "tensor(uint8)": DataType.UINT8,
    "tensor(uint16)": DataType.UINT16,
    "tensor(uint32)": DataType.UINT32,
    "tensor(uint64)": DataType.UINT64,
    "tensor(int8)": DataType.INT8,
    "tensor(int16)": DataType.INT16,
    "tensor(int32)": DataType.INT32,
    "tensor(int64)": DataType.INT64,
    "tensor(float16)": DataType.FP16,
    "tensor(float)": DataType.FP32,
    "tensor(double)": DataType.FP64,
}


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output. A dimension of -1 is free (dynamic)."""

    name: str
    datatype: DataType
    shape: tuple[int, ...]
    dtype: np.dtype[np.generic] = field(init=False, repr=False, compare=False)
    """The datatype's numpy dtype, looked up once (an enum property costs every request that reads it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _TO_NUMPY[self.datatype])

    def to_v2(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype.value, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSignature:
    """Inputs and outputs of one model version, as the runtime reports them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    batchable: bool = field(init=False, repr=False, compare=False)
    """True when every input and output has a free first dimension, so rows can be stacked."""
    output_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Read on every request: worked out once.
        object.__setattr__(self, "by_name", {s.name: s for s in self.inputs})
        specs: Sequence[TensorSpec] = (*self.inputs, *self.outputs)
        batchable = bool(specs) and all(len(s.shape) >= 1 and s.shape[0] == -1 for s in specs)
        object.__setattr__(self, "batchable", batchable)
        object.__setattr__(self, "output_set", frozenset(s.name for s in self.outputs))

    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]
