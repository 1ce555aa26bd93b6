"""A remote V2 server (Triton, or another Sluice) behind the runtime seam.

Each batch is forwarded with the real tritonclient asyncio clients, so Sluice can front a Triton
server and still do its own batching, routing and monitoring. Two tritonclient quirks shape the
code: the HTTP client's only *client-side* deadline is `conn_timeout` (seconds, given at
construction; `infer(timeout=...)` is a server-side queue timeout in microseconds), while gRPC
takes `client_timeout` (seconds) per call. And HTTP transport failures arrive as raw aiohttp /
asyncio exceptions, not `InferenceServerException`, so both are caught and re-raised as ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.http.aio as httpclient
from tritonclient.utils import InferenceServerException

from runtimes.base import ModelRuntime, RuntimeError_, RuntimeInfo, RuntimeLoadError, RuntimeTimeout
from runtimes.tensors import DataType, ModelSignature, TensorSpec

RemoteProtocol = Literal["http", "grpc"]

# What a remote call can raise: the server's own errors, and (HTTP only) transport failures and
# timeouts. aiohttp raises asyncio.TimeoutError, which is not the builtin TimeoutError on Python 3.10.
_REMOTE_ERRORS = (InferenceServerException, aiohttp.ClientError, asyncio.TimeoutError, OSError)


def _specs(tensors: Sequence[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
    """V2 metadata tensors to specs; gRPC-as-JSON spells int64 dims as strings, hence `int()`."""
    return tuple(
        TensorSpec(str(t["name"]), DataType(t["datatype"]), tuple(int(d) for d in t.get("shape", ()))) for t in tensors
    )


def _describe(exc: BaseException) -> str:
    """The remote's own message; a bare timeout has none, so its type name stands in."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _returned_names(result: Any) -> list[str]:
    """Output names in a response: HTTP gives a dict, gRPC a ModelInferResponse protobuf."""
    response = result.get_response()
    if isinstance(response, dict):
        return [str(o["name"]) for o in response.get("outputs", [])]
    return [o.name for o in response.outputs]


class RemoteV2Runtime(ModelRuntime):
    """One model version served by a remote V2 endpoint over HTTP or gRPC."""

    def __init__(
        self,
        client: Any,
        url: str,
        protocol: RemoteProtocol,
        model: str,
        version: str,
        metadata: Mapping[str, Any],
        timeout_s: float,
    ) -> None:
        self._client = client
        self._url = url
        self._protocol = protocol
        self._model = model
        self._version = version
        self._timeout_s = timeout_s
        self._where = f"remote {protocol}://{url} model {model!r}"
        self._signature = ModelSignature(_specs(metadata.get("inputs", [])), _specs(metadata.get("outputs", [])))
        self._info = RuntimeInfo(
            platform="remote_v2",
            execution_provider=f"remote:{protocol}",
            parameters={
                "remote_url": url,
                "remote_model": model,
                "remote_version": version,
                "remote_platform": str(metadata.get("platform", "")),
            },
            device="remote",
        )

    @classmethod
    async def connect(
        cls, url: str, protocol: RemoteProtocol, model: str, version: str = "", *, timeout_s: float = 30.0
    ) -> RemoteV2Runtime:
        """Open a client and read the model's metadata; the signature is the remote's own."""
        if protocol == "http":
            client: Any = httpclient.InferenceServerClient(url, conn_timeout=timeout_s)
        elif protocol == "grpc":
            client = grpcclient.InferenceServerClient(url)
        else:
            raise RuntimeLoadError(f"{url}: unknown remote protocol {protocol!r} (use 'http' or 'grpc')")
        where = f"{protocol}://{url} model {model!r}" + (f" version {version!r}" if version else "")
        try:
            if protocol == "grpc":
                metadata = await client.get_model_metadata(model, version, as_json=True, client_timeout=timeout_s)
            else:
                metadata = await client.get_model_metadata(model, version)
            return cls(client, url, protocol, model, version, metadata, timeout_s)
        except BaseException as exc:
            await client.close()
            if isinstance(exc, _REMOTE_ERRORS):
                raise RuntimeLoadError(f"{where}: cannot read model metadata: {_describe(exc)}") from exc
            if isinstance(exc, (ValueError, KeyError)):  # BYTES/BF16 datatype, malformed metadata
                raise RuntimeLoadError(f"{where}: unsupported model metadata: {_describe(exc)}") from exc
            raise

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    @property
    def info(self) -> RuntimeInfo:
        return self._info

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs else self._signature.output_names()
        mod = httpclient if self._protocol == "http" else grpcclient
        try:
            feeds = []
            for name, arr in inputs.items():
                feed = mod.InferInput(name, list(arr.shape), DataType.from_numpy(arr.dtype).value)
                if self._protocol == "http":
                    feed.set_data_from_numpy(arr, binary_data=True)
                else:
                    feed.set_data_from_numpy(arr)
                feeds.append(feed)
            if self._protocol == "http":
                wanted = [httpclient.InferRequestedOutput(n, binary_data=True) for n in names]
                result = await self._client.infer(self._model, feeds, model_version=self._version, outputs=wanted)
            else:
                wanted = [grpcclient.InferRequestedOutput(n) for n in names]
                result = await self._client.infer(
                    self._model,
                    feeds,
                    model_version=self._version,
                    outputs=wanted,
                    client_timeout=self._timeout_s,
                )
        except (*_REMOTE_ERRORS, ValueError) as exc:
            if _is_timeout(exc):
                raise RuntimeTimeout(f"{self._where} timed out: {_describe(exc)}") from exc
            raise RuntimeError_(f"{self._where}: {_describe(exc)}") from exc
        returned = _returned_names(result)
        if sorted(returned) != sorted(names):
            raise RuntimeError_(f"{self._where} returned outputs {returned}, asked for {names}")
        return {n: result.as_numpy(n) for n in names}

    async def close(self) -> None:
        await self._client.close()


def _is_timeout(exc: BaseException) -> bool:
    """A deadline passed on the way to or at the remote (client timeout, gRPC DEADLINE_EXCEEDED, HTTP 504)."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return True
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        return "DEADLINE_EXCEEDED" in status or status == "504"
    return False
