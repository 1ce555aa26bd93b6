"""The V2 routes as the OpenAPI schema describes them: bodies, answers, and every error's status and shape.

The schema at /openapi.json is a promise that `tests/test_openapi_fuzz.py` holds the gateway to with
Schemathesis: every answer of every documented route has a documented status and matches its schema.
The infer route is served by `HttpAdapter`'s lean ASGI path, ahead of FastAPI, so its body and answers are
described here by hand in JSON Schema (the codec, not pydantic, reads the body: a bad one is a 400 naming
the field, never FastAPI's 422).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runtimes.tensors import DataType


class ErrorBody(BaseModel):
    """Every error's body."""

    error: str = Field(description="What went wrong, naming the tensor, field or model.")


class LiveBody(BaseModel):
    live: bool


class ReadyBody(BaseModel):
    ready: bool


class ModelReadyBody(BaseModel):
    name: str
    ready: bool
    version: str | None = None


class ServerMetadataBody(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelConfigBody(BaseModel):
    """Triton's model configuration (model_config.proto as JSON); the fields Sluice fills are listed."""

    model_config = ConfigDict(extra="allow")
    name: str
    platform: str
    max_batch_size: int = Field(description="Rows per runtime call; 0: the model has no batch dimension.")
    input: list[dict[str, Any]] = Field(description="name, data_type (TYPE_FP32, ...), dims without the batch dim.")
    output: list[dict[str, Any]]
    version_policy: dict[str, Any]
    instance_group: list[dict[str, Any]]
    parameters: dict[str, dict[str, str]] = Field(description="Sluice's own settings, as {name: {string_value}}.")


class StatisticsBody(BaseModel):
    """Triton's statistics: one entry per version (see gateway/serving/triton_stats.py)."""

    model_stats: list[dict[str, Any]]


class IndexEntry(BaseModel):
    name: str
    version: str = Field(description="Empty for a model the repository holds but could not read.")
    state: str = Field(description="READY, LOADING, UNLOADING or UNAVAILABLE.")
    reason: str = Field(description="Why the version is not READY (empty when it is).")


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadataBody(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, str] = Field(
        default_factory=dict, description="Execution provider, serving version, max batch size, the artifact's sha256."
    )


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses` for these error statuses, each with the error body."""
    return {status: {"model": ErrorBody, "description": _WHY.get(status, "Error.")} for status in statuses}


_WHY = {
    400: "The request is malformed or does not match the model (the message names the tensor).",
    401: "An inference key or admin token is needed and none was sent.",
    403: "The key or token is not valid, or the admin API is disabled.",
    404: "No such model or version.",
    405: "Method not allowed.",
    409: "The change clashes with the current state (a rollout under way, a version in use).",
    413: "The body is over the limit.",
    415: "The body's Content-Encoding is not supported.",
    422: "The body or a parameter does not validate (the message names the field).",
    429: "The version's queue is full, or the key is over its quota (see Retry-After).",
    500: "The runtime raised on this request.",
    503: "Not ready, draining, or the state database is unavailable.",
    504: "The request's timeout passed.",
}

_DATATYPES = [d.value for d in DataType]
_PARAMETERS = {"type": "object", "description": "V2 parameters.", "additionalProperties": True}
_INPUT = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": _DATATYPES},
        "parameters": _PARAMETERS,
        "data": {"description": "The values, flat or nested (absent with binary_data_size)."},
    },
}
INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "inputs": {"type": "array", "items": _INPUT, "minItems": 1},
        "outputs": {
            "type": "array",
            "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        },
    },
}
INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "model_version", "id", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string", "description": "The prediction id: send labels for it to /feedback."},
        "parameters": _PARAMETERS,
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "datatype": {"type": "string", "enum": _DATATYPES},
                    "parameters": _PARAMETERS,
                    "data": {"type": "array"},
                },
            },
        },
    },
}
_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def infer_openapi() -> dict[str, Any]:
    """`openapi_extra` of the infer routes: the body, and every answer the lean path gives."""
    answers: dict[str, Any] = {
        "200": {
            "description": "The outputs (with the binary extension: a JSON header, then the raw tensors).",
            "content": {
                "application/json": {"schema": INFER_RESPONSE},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }
    for status in (400, 401, 403, 404, 413, 415, 429, 500, 503, 504):
        answers[str(status)] = {
            "description": _WHY[status],
            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
        }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": INFER_REQUEST},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "Binary tensor extension: Inference-Header-Content-Length bytes of JSON first.",
                },
            },
        },
        "responses": answers,
    }
