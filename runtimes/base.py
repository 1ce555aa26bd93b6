"""The runtime seam: one interface, several placements.

A runtime answers a *batch* for one model version: named numpy arrays in, named numpy
arrays out, rows on the first dimension. Batching, validation, routing and logging live in
the gateway and never in a runtime, so the same runtime can be hosted in-process or inside a
Ray Serve deployment, and a remote V2 server looks exactly like a local ONNX session.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from runtimes.tensors import ModelSignature


class RuntimeError_(Exception):
    """A runtime failed to answer a batch (the model raised, the remote server erred)."""


class RuntimeTimeout(RuntimeError_):
    """The runtime (a remote server) did not answer in time: not the fault of any one request."""


class RuntimeUnavailable(RuntimeError_):
    """The process that runs the runtime is gone (restarting): not the fault of any one request (503)."""


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
    sha256: str | None = None
    """SHA-256 (hex) of the artifact file the runtime serves, wherever it is placed (None: no file of the
    gateway's, as with a remote V2 server). The admin API and the audit log name each loaded version by it, so
    a placement that hosts a runtime elsewhere passes its info on whole."""


@dataclass(frozen=True)
class SyncCall:
    run: Callable[[Mapping[str, np.ndarray], Sequence[str] | None], dict[str, np.ndarray]]
    executor: Executor | None
    """Where `infer` would run it (None: the event loop's default pool)."""
    inline: bool = False
    """Whether a caller may run it on its own thread when it proves quick: only when the call's time is CPU
    time on the calling thread (ONNX Runtime on CPU with one intra-op thread), which is what is measured."""


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

    def synchronous(self) -> SyncCall | None:
        """The runtime's blocking call and the thread pool it runs on, when it has one (ONNX Runtime does;
        a remote server does not). The gateway then runs small batches on its own thread instead of
        handing them over; None: every batch goes through `infer`."""
        return None

    @property
    def concurrency(self) -> int:
        """Batches the runtime can run at once (several sessions, several runtime processes): the batcher in
        front of it runs at least this many (`max_concurrent_batches` may ask for more)."""
        return 1

    def on_availability(self, lost: Callable[[str], None], back: Callable[[], None]) -> None:  # noqa: B027
        """A runtime whose process can go away and come back (the device placement) calls `lost(reason)` and
        then `back()`; the registry makes the version not ready in between. The default never calls them."""

    async def warmup(self) -> None:  # noqa: B027 - optional hook
        """Run once before the version is marked ready; the default does nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, connections and threads."""
