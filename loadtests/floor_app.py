"""The bare floor: the least a KServe V2 JSON server on this stack can do per request.

A bare ASGI handler, no framework, no batching, no thread pool: read the body, `orjson.loads` it, build
the float32 array from inputs[0], call ONNX Runtime (one intra-op thread; CPU, or CUDA with
FLOOR_PROVIDER=cuda) in the handler itself, and answer a V2 JSON response with
`orjson.dumps(..., OPT_SERIALIZE_NUMPY)`. `bench.py` runs it under the same wrk recipe as the gateway;
what the gateway costs above this is what its framework, routing,
validation, batching and thread hand-offs add.

    FLOOR_MODEL=path/to/model.onnx python -m uvicorn loadtests.floor_app:app --host 127.0.0.1 --port 8000 \
        --http httptools --loop uvloop --no-access-log --log-level warning

POST to any path runs the model (the path is not read); any other method answers 200 `{}`, so readiness
polling of /v2/health/ready works. FLOOR_MODEL_NAME sets `model_name` in responses (default "mlp").
A body that is not a one-tensor V2 request answers 400 with {"error": ...}.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson

Message = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODEL_NAME = os.environ.get("FLOOR_MODEL_NAME", "mlp")
_JSON_HEADERS = [(b"content-type", b"application/json")]
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class _Model:
    """The session and its first input/output names, created once at startup."""

    def __init__(self, path: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        provider = _PROVIDERS[os.environ.get("FLOOR_PROVIDER", "cpu")]
        self.session = ort.InferenceSession(path, sess_options=options, providers=[provider])
        if self.session.get_providers()[0] != provider:
            raise RuntimeError(f"ONNX Runtime runs {self.session.get_providers()[0]}, not {provider}")
        self.input_name: str = self.session.get_inputs()[0].name
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]


_model: _Model | None = None


def _load() -> _Model:
    global _model
    if _model is None:
        path = os.environ.get("FLOOR_MODEL")
        if not path:
            raise RuntimeError("set FLOOR_MODEL to the path of an .onnx file")
        _model = _Model(path)
    return _model


def infer(body: bytes) -> bytes:
    """One V2 JSON request in, one V2 JSON response out; raises on a malformed request."""
    model = _model or _load()
    tensor = orjson.loads(body)["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    results = model.session.run(model.output_names, {model.input_name: x})
    outputs = [
        {"name": name, "datatype": "FP32", "shape": list(y.shape), "data": y.ravel()}
        for name, y in zip(model.output_names, results, strict=True)
    ]
    return orjson.dumps({"model_name": MODEL_NAME, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)


async def _respond(send: Send, status: int, payload: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                _load()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":
        await _respond(send, 200, b"{}")
        return
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        more = message.get("more_body", False)
    try:
        payload = infer(body)
    except Exception as exc:
        await _respond(send, 400, orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return
    await _respond(send, 200, payload)
