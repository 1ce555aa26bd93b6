"""The HTTP adapter: V2 REST on FastAPI, with a lean path for `.../infer`.

Health, metadata and /metrics go through FastAPI (documented in the OpenAPI schema). The infer route is
the hot path: `HttpAdapter.admit` reads its headers (key, quota, declared size, encodings) and
`HttpAdapter.respond` decodes, calls the data plane and encodes. The connection protocol calls them itself
(`http_direct`, no ASGI) for nearly every infer request; the plain ASGI handler here, in front of FastAPI,
serves the few it leaves to ASGI (pipelined, `Expect: 100-continue`) with the same two calls, and watches
for the client going away while its request waits, so a disconnected caller does not keep a batch slot.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.admin.auth import InferenceAuth
from gateway.admin.quotas import QuotaBook
from gateway.errors import (
    InvalidInput,
    PayloadTooLarge,
    QuotaExceeded,
    SluiceError,
    mapping_of,
)
from gateway.observability.logs import request_id
from gateway.observability.tracing import extract_context
from gateway.serving.codec_json import decode_request, encode_response
from gateway.serving.dataplane import DataPlane
from gateway.serving.openapi_v2 import (
    IndexEntry,
    LiveBody,
    ModelConfigBody,
    ModelMetadataBody,
    ModelReadyBody,
    ReadyBody,
    ServerMetadataBody,
    StatisticsBody,
    errors,
    infer_openapi,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

ADMIN_MAX_BODY_BYTES = 1024 * 1024
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
JSON = b"application/json"
OCTETS = b"application/octet-stream"
Answer = tuple[int, bytes, bytes, list[tuple[bytes, bytes]] | None]
"""An infer request's answer: status, body, content type, and any other headers."""


@dataclass(slots=True)
class InferHead:
    """What an infer request's headers say, read once: the same for the ASGI path and the direct one."""

    model: str
    version: str | None
    headers: list[tuple[bytes, bytes]]
    declared: int = -1
    """Content-Length, or -1 when absent (chunked) or not a number."""
    header_length: int | None = None
    encoding: bytes = b"identity"
    trace_headers: dict[str, str] | None = None
    authorization: str | None = None


def http_status(exc: BaseException) -> int:
    """The status for a domain error, from the one table in `gateway.errors`."""
    return mapping_of(exc).http


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


class HttpAdapter:
    """The ASGI application uvicorn serves: the lean infer path, then `api` (FastAPI) for the rest."""

    def __init__(
        self,
        dataplane: DataPlane,
        api: ASGIApp,
        max_body_bytes: int,
        inference_auth: InferenceAuth | None = None,
        quotas: QuotaBook | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.max_body_bytes = max_body_bytes
        self.inference_auth = inference_auth or InferenceAuth()
        self.quotas = quotas
        """Per key name (None: no quotas); checked after the key, before the body is read."""
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.match(scope["path"])
            if match is not None:
                await self._infer(scope, receive, send, match.group(1), match.group(2))
                return
        if scope["type"] == "http" and scope["path"].startswith(("/admin/", "/console", "/v2/repository/")):
            await self._bounded(scope, receive, send, ADMIN_MAX_BODY_BYTES, "admin request body")
            return
        if scope["type"] == "http" and scope["path"].endswith("/feedback"):
            await self._bounded(scope, receive, send, self.max_body_bytes, "request body")
            return
        await self.api(scope, receive, send)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, limit: int, what: str) -> None:
        """Read at most `limit` bytes of body before FastAPI sees it (FastAPI reads a body before it
        checks a token, so without this an anonymous caller could make it buffer any size)."""
        body = await _read_body(receive, limit)
        if body is None:
            return
        if body is _TOO_LARGE:
            await _send(send, 413, error_body(f"{what} is over the limit of {limit} bytes"))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.api(scope, replay, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None) -> None:
        """The ASGI form of the infer route: what `http_direct` does on the connection itself, for the
        requests it leaves to ASGI (pipelined behind another, `Expect: 100-continue`)."""
        head = self.admit(scope["headers"], model, version)
        if not isinstance(head, InferHead):
            await _send_answer(send, head)
            return
        body = await _read_body(receive, self.max_body_bytes)
        if body is None:
            return  # client went away
        if body is _TOO_LARGE:
            await _send_answer(send, self.too_large())
            return
        answer = await _until_disconnect(self.respond(head, body), receive)
        if answer is not None:
            await _send_answer(send, answer)

    def admit(self, headers: list[tuple[bytes, bytes]], model: str, version: str | None) -> InferHead | Answer:
        """Read an infer request's headers and check its key, quota and declared size: its `InferHead`, or
        the answer that refuses it before its body is read."""
        head = InferHead(model, version, headers)
        for key, value in headers:
            if key == b"authorization":
                head.authorization = value.decode("latin-1")
            elif key in (b"traceparent", b"tracestate"):
                head.trace_headers = head.trace_headers or {}
                head.trace_headers[key.decode()] = value.decode("latin-1")
            elif key == b"content-length":
                head.declared = int(value) if value.isdigit() else -1
            elif key == b"inference-header-content-length":
                if not value.isdigit():
                    return 400, error_body("Inference-Header-Content-Length must be an integer"), JSON, None
                head.header_length = int(value)
            elif key == b"content-encoding":
                head.encoding = value.lower()
                if head.encoding not in _DECODERS:
                    supported = ", ".join(e.decode() for e in _DECODERS)
                    message = f"Content-Encoding {value.decode(errors='replace')} is not supported ({supported})"
                    return 415, error_body(message), JSON, None
        if self.inference_auth.enabled:
            try:
                name = self.inference_auth.check(head.authorization)
            except SluiceError as exc:
                return http_status(exc), error_body(str(exc)), JSON, [(b"www-authenticate", b"Bearer")]
            if self.quotas is not None and name is not None:
                try:
                    self.quotas.admit(name)
                except QuotaExceeded as exc:
                    retry = str(max(1, math.ceil(exc.retry_after_s))).encode()
                    return 429, error_body(str(exc)), JSON, [(b"retry-after", retry)]
        if head.declared > self.max_body_bytes:
            return self.too_large()
        return head

    async def respond(self, head: InferHead, body: bytes) -> Answer:
        """Decode, infer, encode: the answer to an admitted request whose whole body is here. A domain error
        is its status and message; anything else a 500 that names nothing of the request."""
        model = head.model
        try:
            if head.encoding != b"identity":
                body = _inflate(body, head.encoding, self.max_body_bytes)
            request = decode_request(body, head.header_length, model, head.version)
            request.headers = head.headers
            if head.trace_headers is not None:
                request.trace_context = extract_context(head.trace_headers)
            request_id.set(request.id)
            response = await self.dataplane.infer(request, "http")
            payload, json_length = encode_response(response, request)
        except SluiceError as exc:
            status = http_status(exc)
            if status >= 500:
                log.warning("inference failed: %s", exc, extra={"model": model, "status": status})
            return status, error_body(str(exc)), JSON, None
        except Exception:
            log.exception("unexpected error serving model %s", model)
            return 500, error_body("internal error"), JSON, None
        if json_length is None:
            return 200, payload, JSON, None
        return 200, payload, OCTETS, [(b"inference-header-content-length", str(json_length).encode())]

    def too_large(self) -> Answer:
        return 413, error_body(f"request body is over the limit of {self.max_body_bytes} bytes"), JSON, None


_TOO_LARGE = b"\x00too-large"
# zlib window bits: 16+ for a gzip wrapper, + for zlib (HTTP "deflate"), as tritonclient.http sends them.
_DECODERS = {b"identity": 0, b"": 0, b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}


def _inflate(body: bytes, encoding: bytes, limit: int) -> bytes:
    """Decompress a gzip or deflate body, refusing to inflate past the body limit (no zip bombs)."""
    inflater = zlib.decompressobj(_DECODERS[encoding])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"body is not valid {encoding.decode()}: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body is over the limit of {limit} bytes")
    return data


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return _TOO_LARGE
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


WATCH_AFTER_S = 0.02
"""A request still unanswered after this long starts watching for its client going away. Most are
answered sooner, and a watcher (a task of its own) would cost each of them more than its answer."""


async def _until_disconnect(work: Awaitable[T], receive: Receive) -> T | None:
    """Await `work`; if the client disconnects first, cancel it (its queue slot is skipped) and return None.

    The work runs in the current task; a watcher task is started only after `WATCH_AFTER_S`.
    """
    current = asyncio.current_task()
    assert current is not None
    watching = _Watch(current, receive)
    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watching.arm)
    try:
        return await work
    except asyncio.CancelledError:
        if watching.gone:
            current.uncancel()
            return None
        raise
    finally:
        watching.waiting = False
        timer.cancel()
        if watching.watcher is not None:
            watching.watcher.cancel()


class _Watch:
    """Cancels the request's task when its client disconnects while the request is still waiting."""

    __slots__ = ("current", "gone", "receive", "waiting", "watcher")

    def __init__(self, current: asyncio.Task[Any], receive: Receive) -> None:
        self.current = current
        self.receive = receive
        self.waiting = True
        self.gone = False
        self.watcher: asyncio.Future[Message] | None = None

    def arm(self) -> None:
        if self.waiting:
            self.watcher = asyncio.ensure_future(self.receive())
            self.watcher.add_done_callback(self._on_message)

    def _on_message(self, done: asyncio.Future[Message]) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        if done.result()["type"] == "http.disconnect" and self.waiting:
            self.gone = True
            self.current.cancel()


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_answer(send: Send, answer: Answer) -> None:
    status, body, content_type, extra = answer
    await _send(send, status, body, content_type, extra)


def inference_key_dependency(keys: InferenceAuth) -> Any:
    """The FastAPI dependency that guards model routes with the inference keys (none set: open)."""

    async def inference_key(request: Request) -> None:
        keys.check(request.headers.get("authorization"))

    return Depends(inference_key)


def build_api(
    dataplane: DataPlane,
    exposition: Callable[[], bytes],
    inference_auth: InferenceAuth | None = None,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The FastAPI app: health, metadata, /metrics (`exposition` renders it) and the given routers
    (the composition root adds the admin, monitor and feedback APIs).

    `inference_auth` with keys guards model metadata and readiness as it guards infer; server
    health, server metadata and /metrics stay open for probes and Prometheus.
    """
    guarded = [inference_key_dependency(inference_auth or InferenceAuth())]
    api = FastAPI(
        title="Sluice",
        summary="KServe V2 / Open Inference Protocol gateway",
        description="POST /v2/models/{model}[/versions/{version}]/infer takes V2 JSON and the binary tensor extension.",
    )

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(exc)}, status_code=422)

    @api.exception_handler(SluiceError)
    async def _sluice_error(_: Request, exc: SluiceError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=http_status(exc))

    model_errors = errors(401, 403, 404, 503)

    @api.get("/v2/health/live", tags=["health"], response_model=LiveBody)
    async def live() -> JSONResponse:
        return JSONResponse({"live": dataplane.live()}, status_code=200)

    @api.get("/v2/health/ready", tags=["health"], response_model=ReadyBody, responses={503: {"model": ReadyBody}})
    async def ready() -> JSONResponse:
        ok = dataplane.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @api.get("/v2", tags=["metadata"], response_model=ServerMetadataBody)
    async def server_metadata() -> dict[str, Any]:
        return dataplane.server_metadata()

    # Triton's extensions: statistics (registered before /v2/models/{model}, which "stats" would match),
    # model configuration, the repository index. Read-only: guarded by the inference keys as metadata is.
    @api.get(
        "/v2/models/stats",
        tags=["statistics"],
        dependencies=guarded,
        response_model=StatisticsBody,
        responses=model_errors,
    )
    async def all_statistics() -> dict[str, Any]:
        return dataplane.model_statistics(None, None)

    def of_model_and_version(
        suffix: str, tag: str, body: type[BaseModel], read: Callable[[str, str | None], dict[str, Any]], name: str
    ) -> None:
        """One read, at /v2/models/{model}<suffix> (the version the policy serves) and at
        /v2/models/{model}/versions/{version}<suffix>."""

        async def of_model(model: str) -> dict[str, Any]:
            return read(model, None)

        async def of_version(model: str, version: str) -> dict[str, Any]:
            return read(model, version)

        for path, endpoint, prefix in (
            (f"/v2/models/{{model}}{suffix}", of_model, "model"),
            (f"/v2/models/{{model}}/versions/{{version}}{suffix}", of_version, "version"),
        ):
            api.add_api_route(
                path,
                endpoint,
                methods=["GET"],
                name=f"{prefix}_{name}",
                tags=[tag],
                dependencies=guarded,
                response_model=body,
                responses=model_errors,
            )

    of_model_and_version("/stats", "statistics", StatisticsBody, dataplane.model_statistics, "statistics")
    of_model_and_version("/config", "metadata", ModelConfigBody, dataplane.model_config, "config")

    @api.post(
        "/v2/repository/index",
        tags=["repository"],
        dependencies=guarded,
        response_model=list[IndexEntry],
        responses=errors(400, 401, 403, 413),
        summary='Every model and version with its state (body, optional: {"ready": true} for the ready ones)',
    )
    async def repository_index(request: Request) -> list[dict[str, str]]:
        return dataplane.repository_index(index_ready_only(await request.body()))

    # After the statistics and config routes: "{model}" would take "stats" and "{version}" "config" otherwise.
    of_model_and_version("", "metadata", ModelMetadataBody, dataplane.model_metadata, "metadata")

    not_ready = {**model_errors, 503: {"model": ModelReadyBody, "description": "Known, but not ready."}}

    @api.get(
        "/v2/models/{model}/ready",
        tags=["health"],
        dependencies=guarded,
        response_model=ModelReadyBody,
        responses=not_ready,
    )
    async def model_ready(model: str) -> JSONResponse:
        ok = dataplane.model_ready(model, None)
        return JSONResponse({"name": model, "ready": ok}, status_code=200 if ok else 503)

    @api.get(
        "/v2/models/{model}/versions/{version}/ready",
        tags=["health"],
        dependencies=guarded,
        response_model=ModelReadyBody,
        responses=not_ready,
    )
    async def version_ready(model: str, version: str) -> JSONResponse:
        ok = dataplane.model_ready(model, version)
        return JSONResponse({"name": model, "version": version, "ready": ok}, status_code=200 if ok else 503)

    @api.get(
        "/metrics",
        tags=["observability"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
    )
    async def metrics() -> Response:
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    for path, endpoint in (
        ("/v2/models/{model}/infer", _served_by_the_lean_path),
        ("/v2/models/{model}/versions/{version}/infer", _served_by_the_lean_path_pinned),
    ):
        api.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            tags=["inference"],
            summary="Infer (V2 JSON, or the binary tensor extension)",
            openapi_extra=infer_openapi(),
            response_class=Response,
            name="infer" if "versions" not in path else "infer_version",
        )

    for router in routers:
        api.include_router(router)
    _without_422_on_infer(api)
    return api


async def _served_by_the_lean_path(model: str) -> Response:
    """Never reached: `HttpAdapter` serves POST .../infer before FastAPI sees it. The route is here so that
    the OpenAPI schema describes the infer path (see `openapi_v2`)."""
    raise RuntimeError("POST .../infer is served by HttpAdapter, ahead of FastAPI")


async def _served_by_the_lean_path_pinned(model: str, version: str) -> Response:
    """As `_served_by_the_lean_path`, for a pinned version."""
    raise RuntimeError("POST .../infer is served by HttpAdapter, ahead of FastAPI")


def _without_422_on_infer(api: FastAPI) -> None:
    """FastAPI documents a 422 for every route with path parameters; the infer path answers a bad request
    400, never 422, so the schema must not promise one."""
    make = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = make()
            for path, item in schema.get("paths", {}).items():
                if path.endswith("/infer"):
                    item.get("post", {}).get("responses", {}).pop("422", None)
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def index_ready_only(body: bytes) -> bool:
    """The `ready` flag of a repository index request (Triton's body: {"repository_name": ..., "ready": ...})."""
    if not body.strip():
        return False
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    ready = document.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("'ready' must be true or false")
    return ready


def validation_message(exc: RequestValidationError) -> str:
    """One line per problem, naming the field: "body.canary_weight: Input should be less than or equal to 100"."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "invalid request: " + "; ".join(parts)
