"""One model version as a Ray Serve deployment: the gateway's own runtime and batcher, in a replica.

Ingress replicas send it whole batches (already validated); its batcher merges the batches that arrive
together from several ingress replicas into one runtime call, up to the version's `max_batch_size`, and
splits a failing one as the gateway's does, so one bad batch never fails another's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gateway.serving.batcher import Batcher
from gateway.serving.registry import version_batcher
from gateway.serving.repository import scan_model
from gateway.serving.runtime_loader import load_runtime
from runtimes.base import ModelRuntime, RuntimeInfo
from runtimes.tensors import ModelSignature


class VersionServer:
    async def __init__(self, model_repo: str, model: str, version: str) -> None:  # type: ignore[misc] # Serve awaits it
        repo = Path(model_repo)
        source = scan_model(repo, repo / model, every_version=True)
        match = [v for v in source.versions if v.version == version]
        if not match:
            raise RuntimeError(source.error or f"model '{model}' has no version '{version}' in {repo}")
        self._executor = ThreadPoolExecutor(max_workers=max(1, len(os.sched_getaffinity(0))), thread_name_prefix="rt")
        self.runtime: ModelRuntime = await load_runtime(source, match[0], self._executor)
        await self.runtime.warmup()
        self.batcher: Batcher = version_batcher(self.runtime, source.config, f"{model}/{version}", None)

    def metadata(self) -> tuple[ModelSignature, RuntimeInfo, int]:
        """What an ingress replica needs to validate requests and describe the version; and this replica's pid
        (the fault tests kill it)."""
        return self.runtime.signature, self.runtime.info, os.getpid()

    async def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        rows = int(next(iter(inputs.values())).shape[0]) if inputs else 0
        answer, _ = await self.batcher.submit(inputs, rows, outputs, None)
        return answer

    async def __del__(self) -> None:
        await self.batcher.drain(10.0)
        await self.batcher.close()
        await self.runtime.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
