"""One model version as a Ray Serve deployment: the gateway's own runtime and batcher, in a replica.

Ingress replicas send it whole batches (already validated); its batcher merges the batches that arrive
together from several ingress replicas into one runtime call, up to the version's `max_batch_size`, and
splits a failing one as the gateway's does, so one bad batch never fails another's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gateway.ray.repository import RepositoryRef
from gateway.serving.batcher import Batcher
from gateway.serving.registry import version_batcher
from gateway.serving.runtime_loader import load_runtime
from runtimes.base import ModelRuntime, RuntimeInfo
from runtimes.tensors import ModelSignature


class VersionServer:
    async def __init__(self, repository: RepositoryRef, model: str, version: str) -> None:  # type: ignore[misc] # Serve awaits it
        # An object-store version is fetched into this node's cache (verified, never a half file) before it loads.
        source, found = await asyncio.to_thread(repository.fetch, model, version)
        self._executor = ThreadPoolExecutor(max_workers=max(1, len(os.sched_getaffinity(0))), thread_name_prefix="rt")
        self.runtime: ModelRuntime = await load_runtime(source, found, self._executor)
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
