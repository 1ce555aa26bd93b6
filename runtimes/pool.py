"""Several sessions of one version, each running one batch at a time (Triton's instance group count).

A runtime process holding a version with `runtime.instances: N` loads N sessions and puts them behind one
`RuntimePool`: the version's one batcher runs up to N batches at once (`concurrency`), and each batch takes an
idle session for the length of its call. On a GPU that is N concurrent streams over one copy of the process's
CUDA context; on the CPU, N batches on N threads. A call cancelled while waiting for an idle session takes
none; a call cancelled while running gives its session back once the session has stopped (each session's own
`infer` waits for ONNX Runtime's terminate flag to take).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from runtimes.base import ModelRuntime, RuntimeInfo
from runtimes.tensors import ModelSignature


class RuntimePool(ModelRuntime):
    def __init__(self, runtimes: Sequence[ModelRuntime]) -> None:
        if not runtimes:
            raise ValueError("a runtime pool needs at least one runtime")
        self.runtimes = list(runtimes)
        self._idle: asyncio.Queue[ModelRuntime] = asyncio.Queue()
        for runtime in self.runtimes:
            self._idle.put_nowait(runtime)
        first = self.runtimes[0].info
        self._info = dataclasses.replace(first, parameters={**first.parameters, "instances": str(len(self.runtimes))})

    @property
    def signature(self) -> ModelSignature:
        return self.runtimes[0].signature

    @property
    def info(self) -> RuntimeInfo:
        return self._info

    @property
    def concurrency(self) -> int:
        return len(self.runtimes)

    @property
    def busy(self) -> int:
        """Sessions running a batch now."""
        return len(self.runtimes) - self._idle.qsize()

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        runtime = await self._idle.get()
        try:
            return await runtime.infer(inputs, outputs)
        finally:
            self._idle.put_nowait(runtime)

    async def warmup(self) -> None:
        """Warm every session (each pays its own lazy initialisation)."""
        for runtime in self.runtimes:
            await runtime.warmup()

    async def close(self) -> None:
        for runtime in self.runtimes:
            await runtime.close()
