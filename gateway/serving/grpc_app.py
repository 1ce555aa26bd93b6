"""The gRPC adapter: KServe V2 GRPCInferenceService on grpc.aio, on the gateway's event loop.

Each method converts the message, calls the same `DataPlane` as HTTP, and converts back;
domain errors become status codes here and only here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from gateway.admin.auth import InferenceAuth
from gateway.admin.quotas import QuotaBook
from gateway.errors import (
    QuotaExceeded,
    SluiceError,
    mapping_of,
)
from gateway.observability.logs import request_id
from gateway.observability.tracing import extract_context
from gateway.serving.codec_grpc import (
    config_response,
    decode_request,
    encode_response,
    index_response,
    metadata_response,
    parameters_to_dict,
    statistics_response,
)
from gateway.serving.dataplane import DataPlane
from gateway.serving.triton_index import RepositoryActions

log = logging.getLogger(__name__)

T = TypeVar("T")


def grpc_status(exc: BaseException) -> grpc.StatusCode:
    """The status for a domain error, from the one table in `gateway.errors`."""
    return grpc.StatusCode[mapping_of(exc).grpc]


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        dataplane: DataPlane,
        auth: InferenceAuth | None = None,
        quotas: QuotaBook | None = None,
        repository: RepositoryActions | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.auth = auth or InferenceAuth()
        self.quotas = quotas
        self.repository = repository
        """Load and unload (admin changes); None: refused as unavailable (a gateway without a control plane)."""

    def _check(self, context: grpc.aio.ServicerContext, infer: bool = False) -> None:
        """Inference keys, when configured, ride in the `authorization` metadata as on HTTP; `infer`: the key
        name's quota applies too."""
        if self.auth.enabled:
            name = self.auth.check(_authorization(context))
            if infer and self.quotas is not None and name is not None:
                self.quotas.admit(name)

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def _read(self, context: grpc.aio.ServicerContext, read: Callable[[], T]) -> T:
        """A read behind the inference keys: a SluiceError aborts the call with its status and message."""
        try:
            self._check(context)
            return read()
        except SluiceError as exc:
            await context.abort(grpc_status(exc), str(exc))
            raise  # abort raises; this line is for the type checker

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ready = await self._read(context, lambda: self.dataplane.model_ready(request.name, request.version or None))
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = await self._read(context, lambda: self.dataplane.model_metadata(request.name, request.version or None))
        return metadata_response(meta)

    # -- Triton's extensions: model configuration, statistics, model repository ----------------

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        config = await self._read(context, lambda: self.dataplane.model_config(request.name, request.version or None))
        return config_response(config)

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        stats = await self._read(
            context, lambda: self.dataplane.model_statistics(request.name or None, request.version or None)
        )
        return statistics_response(stats)

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        index = await self._read(context, lambda: self.dataplane.repository_index(request.ready))
        return index_response(index)

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._change(request, context, "load")
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._change(request, context, "unload")
        return pb.RepositoryModelUnloadResponse()

    async def _change(self, request: Any, context: grpc.aio.ServicerContext, action: str) -> None:
        """Load or unload with the admin token of the `authorization` metadata (not an inference key)."""
        if self.repository is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this gateway takes no repository changes")
        assert self.repository is not None
        try:
            change = self.repository.load if action == "load" else self.repository.unload
            await change(_authorization(context), request.model_name, parameters_to_dict(request.parameters))
        except SluiceError as exc:
            await context.abort(grpc_status(exc), str(exc))

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self._check(context, infer=True)
            infer_request = decode_request(request)
            metadata = context.invocation_metadata() or ()
            infer_request.headers = metadata
            carrier = {m.key: m.value for m in metadata if m.key in ("traceparent", "tracestate")}
            if carrier:
                infer_request.trace_context = extract_context(carrier)
            request_id.set(infer_request.id)
            remaining = context.time_remaining()
            if remaining is not None:
                infer_request.deadline_s = max(remaining, 0.0)
            response = await self.dataplane.infer(infer_request, "grpc")
            return encode_response(response)
        except SluiceError as exc:
            code = grpc_status(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.warning("inference failed: %s", exc, extra={"model": request.model_name})
            if isinstance(exc, QuotaExceeded):
                wait = str(max(1, math.ceil(exc.retry_after_s)))
                await context.abort(code, str(exc), trailing_metadata=(("retry-after", wait),))
            await context.abort(code, str(exc))
        except Exception:
            log.exception("unexpected error serving model %s", request.model_name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    return next((m.value for m in context.invocation_metadata() or () if m.key == "authorization"), None)


def _not_served(name: str) -> Any:
    """A handler for a method of the service that Sluice does not serve: UNIMPLEMENTED, in plain words (the
    generated base class would raise NotImplementedError, which grpc.aio reports with its class name)."""

    async def handler(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by this server")

    handler.__name__ = name
    return handler


for _method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if _method.name not in InferenceServicer.__dict__:
        setattr(InferenceServicer, _method.name, _not_served(_method.name))


@dataclass(frozen=True)
class GrpcLimits:
    """What a careless or hostile client may hold: metadata size, an idle channel, a slow TLS/HTTP2 handshake."""

    max_metadata_bytes: int = 32 * 1024
    idle_timeout_s: float = 30.0
    handshake_timeout_s: float = 10.0


def build_grpc_server(
    dataplane: DataPlane,
    host: str,
    port: int,
    max_message_bytes: int,
    auth: InferenceAuth | None = None,
    *,
    reuse_port: bool = False,
    limits: GrpcLimits | None = None,
    tls: tuple[bytes, bytes, bytes | None] | None = None,
    quotas: QuotaBook | None = None,
    repository: RepositoryActions | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Create (not start) the server; returns it with the port actually bound. `reuse_port`: share the port
    with the other workers of this machine (SO_REUSEPORT: the kernel spreads connections over them).
    `tls`: (certificate chain, key, client CA) in PEM; with a CA, clients must present a certificate it signed."""
    limits = limits or GrpcLimits()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_metadata_size", limits.max_metadata_bytes),
            ("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * 1000)),
            ("grpc.server_handshake_timeout_ms", int(limits.handshake_timeout_s * 1000)),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dataplane, auth, quotas, repository), server
    )
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        chain, key, ca = tls
        credentials = grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
        )
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    return server, bound
