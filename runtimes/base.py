"""The runtime seam: one interface, several placements.

A runtime answers a *batch* for one model version: named numpy arrays in, named numpy
arrays out, rows on the first dimension. Batching, validation, routing and logging live in
the gateway and never in a runtime, so the same runtime can be hosted in-process or inside a
Ray Serve deployment, and a remote V2 server looks exactly like a local ONNX session.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from runtimes.tensors import ModelSignature


class RuntimeError_(Exception):
    """A runtime failed to answer a batch (the model raised, the remote server erred)."""


class RuntimeTimeout(RuntimeError_):
    """The runtime (a remote server) did not answer in time: not the fault of any one request."""


class RuntimeLoadError(Exception):
    """An artifact could not be loaded; the message names the file."""


@dataclass(frozen=True)
class RuntimeInfo:
    """What the runtime says about itself in model metadata and metrics."""

    platform: str
    """V2 `platform`, e.g. 'onnxruntime_onnx'."""
    execution_provider: str
    """The provider that actually runs, e.g. 'CUDAExecutionProvider' or 'CPUExecutionProvider'."""
    parameters: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    """Where the computation runs: 'cpu', 'cuda:<ordinal>' (the CUDA device the session was placed on), or
    'remote'. Operators read it to see which versions share a GPU."""


class ModelRuntime(abc.ABC):
    """Something that answers a batch for a version."""

    @property
    @abc.abstractmethod
    def signature(self) -> ModelSignature: ...

    @property
    @abc.abstractmethod
    def info(self) -> RuntimeInfo: ...

    @abc.abstractmethod
    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one batch. `outputs` narrows what is computed; None means every output."""

    async def warmup(self) -> None:  # noqa: B027 - optional hook
        """Run once before the version is marked ready; the default does nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, connections and threads."""
