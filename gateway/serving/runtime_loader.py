"""Loading a version's runtime: the one place that turns a repository entry into a `ModelRuntime`.

The gateway's registry calls it for a runtime in its own process; a Ray Serve version deployment calls it
for the same runtime in its replica (`gateway.ray.version`), so both placements load a version the same way.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from gateway.serving.repository import ModelSource, VersionSource
from runtimes.base import ModelRuntime
from runtimes.onnx import OnnxRuntime


async def load_runtime(
    source: ModelSource, version: VersionSource, executor: Executor | None, device_id: int = 0
) -> ModelRuntime:
    """`device_id`: the CUDA ordinal a GPU provider places the session on (a runtime process's own GPU)."""
    rt = source.config.runtime
    if rt.kind == "remote":
        from runtimes.remote import RemoteV2Runtime

        assert rt.url is not None
        return await RemoteV2Runtime.connect(
            rt.url,
            rt.protocol,
            rt.remote_model or source.name,
            version.version,
            timeout_s=(source.config.timeout_ms or 30_000) / 1000.0,
        )
    assert version.artifact is not None
    return await asyncio.to_thread(
        OnnxRuntime.load,
        version.artifact,
        providers=rt.execution_providers,
        intra_op_threads=rt.intra_op_threads,
        executor=executor,
        device_id=device_id,
        expected_sha256=rt.sha256.get(int(version.version)) if version.version.isdigit() else None,
    )
