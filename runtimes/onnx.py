"""ONNX Runtime: CUDA execution provider first when present, then CPU.

onnxruntime-gpu falls back to CPU silently (it only logs), so the provider that really runs
is read back from the session with `get_providers()` and reported, never assumed.
ONNX Runtime releases the GIL while it computes, so a batch runs in a thread pool and the
event loop keeps accepting requests.

A call that is cancelled (the gateway's watchdog gives up on it) is stopped for real: each call
carries its own `RunOptions`, and cancelling sets its `terminate` flag, which ONNX Runtime checks
between kernels and between a Loop's iterations, so the worker thread comes back instead of
computing for nobody. The artifact's bytes are read once, hashed (SHA-256) and handed to ONNX
Runtime as they are, so the digest reported is the digest of what was loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import ModelRuntime, RuntimeError_, RuntimeInfo, RuntimeLoadError, SyncCall
from runtimes.tensors import DataType, ModelSignature, TensorSpec

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEFAULT_PROVIDERS = ("cuda", "cpu")
TERMINATE_GRACE_S = 2.0
"""How long a cancelled call waits for ONNX Runtime to notice its terminate flag and free its thread."""
_GPU_PROVIDERS = frozenset(("CUDAExecutionProvider", "TensorrtExecutionProvider"))


def device_of(provider: str, provider_options: Mapping[str, Mapping[str, Any]]) -> str:
    """The device a session runs on, from its first provider and `InferenceSession.get_provider_options()`.

    The CUDA and TensorRT providers report the CUDA ordinal they were given as `device_id` (0 unless set);
    every other provider computes on the CPU.
    """
    if provider not in _GPU_PROVIDERS:
        return "cpu"
    return f"cuda:{provider_options.get(provider, {}).get('device_id', '0')}"


def import_onnxruntime() -> Any:
    """Import onnxruntime, or say plainly which extra to install."""
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeLoadError(
            "ONNX Runtime is not installed: install exactly one of the extras "
            "'sluicegate[cpu]' (onnxruntime) or 'sluicegate[gpu]' (onnxruntime-gpu)"
        ) from exc
    return onnxruntime


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


class OnnxRuntime(ModelRuntime):
    """One ONNX Runtime inference session for one model version."""

    def __init__(self, session: Any, path: Path, executor: Executor | None, sha256: str = "") -> None:
        self._session = session
        self._executor = executor
        self._run_options = import_onnxruntime().RunOptions
        inputs = tuple(TensorSpec(i.name, DataType.from_onnx(i.type), _dims(i.shape)) for i in session.get_inputs())
        outputs = tuple(TensorSpec(o.name, DataType.from_onnx(o.type), _dims(o.shape)) for o in session.get_outputs())
        self._signature = ModelSignature(inputs, outputs)
        provider = session.get_providers()[0]
        self._info = RuntimeInfo(
            platform="onnxruntime_onnx",
            execution_provider=provider,
            parameters={"execution_provider": provider, "artifact": path.name, "sha256": sha256},
            device=device_of(provider, session.get_provider_options()),
            sha256=sha256 or None,
        )

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        intra_op_threads: int = 1,
        executor: Executor | None = None,
        device_id: int = 0,
        expected_sha256: str | None = None,
    ) -> OnnxRuntime:
        """Create the session (blocking; call it off the event loop). `device_id`: the CUDA ordinal for a GPU
        provider (0: the provider's default). `expected_sha256`: refuse a file whose digest differs (a tampered
        or swapped artifact), naming both digests."""
        ort = import_onnxruntime()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RuntimeLoadError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and digest != expected_sha256.lower():
            raise RuntimeLoadError(
                f"{path}: SHA-256 is {digest}, but config.yaml expects {expected_sha256.lower()}: "
                "refusing an artifact that does not match"
            )
        available = set(ort.get_available_providers())
        wanted = []
        for p in providers:
            name = PROVIDER_NAMES.get(p.lower(), p)
            if name in available:
                wanted.append(name)
        if not wanted:
            wanted = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 4  # a failed run reaches its callers (and the log) as an exception, once
        chosen: list[Any] = [
            (p, {"device_id": str(device_id)}) if device_id and p in _GPU_PROVIDERS else p for p in wanted
        ]
        try:
            session = ort.InferenceSession(data, sess_options=options, providers=chosen)
        except Exception as exc:
            raise RuntimeLoadError(f"{path}: cannot load ONNX model: {exc}") from exc
        runtime = cls(session, path, executor, digest)
        if runtime.info.execution_provider != wanted[0]:
            log.warning(
                "%s: asked for %s but ONNX Runtime runs %s",
                path,
                wanted[0],
                runtime.info.execution_provider,
            )
        return runtime

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    @property
    def info(self) -> RuntimeInfo:
        return self._info

    def run(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None, options: Any = None
    ) -> dict[str, np.ndarray]:
        """Run synchronously; used by `infer` in a worker thread and by benchmarks as the raw baseline.
        `options`: ONNX Runtime `RunOptions` (its `terminate` flag stops the call from another thread)."""
        names = list(outputs) if outputs else self._signature.output_names()
        try:
            results = self._session.run(names, dict(inputs), options)
        except Exception as exc:
            raise RuntimeError_(f"ONNX Runtime failed: {exc}") from exc
        return dict(zip(names, results, strict=True))

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run in the thread pool. Cancelled, it sets the call's terminate flag and waits (up to
        TERMINATE_GRACE_S) for ONNX Runtime to give the thread back, then re-raises the cancellation."""
        loop = asyncio.get_running_loop()
        options = self._run_options()
        future = loop.run_in_executor(self._executor, self.run, inputs, outputs, options)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            options.terminate = True
            await asyncio.wait({future}, timeout=TERMINATE_GRACE_S)
            if future.done():
                with contextlib.suppress(BaseException):
                    future.result()  # "Exiting due to terminate flag": expected, and nobody waits for it
            else:
                log.error(
                    "ONNX Runtime did not stop within %.1f s of its terminate flag: a thread stays busy",
                    TERMINATE_GRACE_S,
                )
            raise

    def synchronous(self) -> SyncCall:
        on_cpu = self._info.execution_provider == "CPUExecutionProvider"
        one_thread = self._session.get_session_options().intra_op_num_threads == 1
        return SyncCall(self.run, self._executor, inline=on_cpu and one_thread)

    async def warmup(self) -> None:
        """Run one row of zeros so the first real request does not pay for lazy initialisation."""
        feed = {}
        for spec in self._signature.inputs:
            shape = tuple(1 if d < 0 else d for d in spec.shape)
            feed[spec.name] = np.zeros(shape, dtype=spec.datatype.numpy)
        await self.infer(feed)
