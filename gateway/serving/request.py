"""The one internal request type, from protocol adapter to runtime.

Both the HTTP and the gRPC adapters decode into `InferRequest` and encode from
`InferResponse`; everything between (validation, routing, batching, logging) sees only these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class RequestedOutput:
    """An output the caller asked for, with its V2 per-output parameters."""

    name: str
    binary: bool | None = None
    """`binary_data` of the HTTP binary extension; None means the request-wide default."""


@dataclass(slots=True)
class InferRequest:
    model: str
    version: str | None
    """None: the traffic policy decides. A value pins the version."""
    inputs: dict[str, np.ndarray]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    """None: every output of the model."""
    timeout_s: float | None = None
    """From the V2 `timeout` parameter (microseconds on the wire); None: the model's default."""
    deadline_s: float | None = None
    """Time the transport still allows (a gRPC deadline); it can only shorten the timeout, never lengthen it."""
    binary_output: bool = False
    headers: Sequence[tuple[Any, Any]] = ()
    """Raw transport headers (HTTP: bytes pairs; gRPC: metadata), read only when a policy needs one."""
    trace_context: Any = None
    """The caller's OpenTelemetry context (W3C traceparent), when it sent one."""
    """HTTP binary extension: `binary_data_output` request parameter."""


@dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    id: str
    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)


def header_value(headers: Sequence[tuple[Any, Any]], name: str) -> str | None:
    """Case-insensitive header (or gRPC metadata) lookup over either transport's raw pairs."""
    wanted = name.lower()
    for key, value in headers:
        k = key.decode("latin-1") if isinstance(key, bytes) else key
        if k.lower() == wanted:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None
