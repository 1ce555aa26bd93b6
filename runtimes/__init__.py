"""Model runtimes behind one small interface: "something that answers a batch for a version".

`runtimes` never imports `gateway`; the gateway composes runtimes. What users import is
kept small: the interface, the tensor types, and the two runtimes.
"""

from runtimes.base import ModelRuntime, RuntimeError_, RuntimeInfo
from runtimes.tensors import DataType, ModelSignature, TensorSpec

__all__ = ["DataType", "ModelRuntime", "ModelSignature", "RuntimeError_", "RuntimeInfo", "TensorSpec"]
