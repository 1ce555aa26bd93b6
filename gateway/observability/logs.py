"""Structured logs that carry the request id without threading it through every call.

Adapters set `request_id` (a ContextVar, as MLServer's context does for model names); every
log record made while serving that request gets it as a field. The data plane sets `span_context`
to the request's span, so the record also names its `trace_id` and `span_id` (hex, as trace
backends show them; for an unsampled request the trace id is still the caller's, when it sent one).
Secrets never reach a record: no headers or bodies are logged.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson
from opentelemetry.trace import SpanContext

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("sluice_request_id", default="")
span_context: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar("sluice_span", default=None)

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        ctx = span_context.get()
        if ctx is not None and ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,  # with --workers, which process said it
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and value not in ("", None):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO: the leader forwarder, webhooks and the admin CLI would print a line per call.
    for noisy in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
