"""Labels: POST /v2/models/{model}/feedback, ground truth for logged predictions, on the inference port.

Applications send what really happened, possibly hours after the prediction, naming predictions
by the V2 response `id` each answer carried (HTTP and gRPC alike):

    {"labels": [{"id": "3f2a...", "value": 1}, {"id": "9c1e...", "value": [0, 2], "at": "2025-01-31T12:00:00Z"}]}

or one label alone: `{"id": "3f2a...", "value": 1}`. `value` is any JSON value but null (a class,
a number, a list for a prediction of several rows); `at`, when the truth became known (ISO 8601 or
epoch seconds; no zone means UTC), defaults to when it was received.

- 200 `{"stored": n, "unchanged": m}`: new and changed labels, and repeats of a stored label (a
  repeated post is idempotent; a different value for the same id replaces the old one).
- 404 when the model is unknown, or when any id is not one of the model's logged predictions:
  then nothing of the request is stored and the answer lists the unknown ids (all or nothing, so
  a client can fix its batch and resend it whole). A prediction that is still queued in the
  prediction log is written first, so a label may follow its prediction at once.
- 422 for a malformed body, naming the field; 400 for a body that is not JSON.

The route takes the inference keys when they are configured (it is mounted with the inference
routes' guard), not the admin tokens: labels come from the applications that send predictions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.serving.openapi_v2 import ErrorBody, errors
from gateway.serving.registry import ModelRegistry
from monitors.prediction_log import MAX_ID_LENGTH, PredictionLog
from monitors.records import Label, LabelResult

log = logging.getLogger(__name__)

UTC = timezone.utc
MAX_LABELS = 10_000
"""Labels per request; more go in several requests."""
UNKNOWN_SHOWN = 20
"""Unknown ids named in the error message; the `unknown` list carries up to UNKNOWN_LISTED."""
UNKNOWN_LISTED = 1000


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, description="The prediction's V2 response id.")
    value: Any = Field(description="Ground truth: a class, a number, or a list for several rows; not null.")
    at: datetime | None = Field(None, description="When the truth became known; default: when it was received.")

    @field_validator("value")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null")
        return value

    def to_label(self) -> Label:
        at = self.at
        if at is not None and (at.tzinfo is None or at.utcoffset() is None):
            at = at.replace(tzinfo=UTC)
        return Label(self.id, self.value, at)


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[LabelIn] = Field(min_length=1, max_length=MAX_LABELS)


def build_feedback_router(
    registry: ModelRegistry, predictions: Callable[[], PredictionLog | None], dependencies: Sequence[Depends] = ()
) -> APIRouter:
    """The feedback route; `predictions` gives the gateway's log (its sink is the store), read per request."""
    router = APIRouter(tags=["feedback"], dependencies=list(dependencies))

    @router.post(
        "/v2/models/{model}/feedback",
        responses={
            **errors(400, 401, 403, 413, 422, 503),
            200: {"description": 'Stored: `{"stored": n, "unchanged": m}`.'},
            404: {
                "model": ErrorBody,
                "description": "Unknown model, or unknown prediction ids (listed; nothing stored).",
            },
        },
    )
    async def feedback(model: str, request: Request) -> JSONResponse:
        """Ground truth for the model's logged predictions (one label, or `{"labels": [...]}`)."""
        registry.get_model(model)  # ModelNotFound -> 404
        log_ = predictions()
        if log_ is None:
            return JSONResponse({"error": "the prediction log is not enabled on this gateway"}, status_code=503)
        parsed = _parse(await request.body())
        if isinstance(parsed, JSONResponse):
            return parsed
        try:
            result = await asyncio.to_thread(log_.sink.write_labels, model, parsed)
            if result.unknown:
                # The predictions may still be queued (a label sent right after its answer): write them, retry.
                await log_.flush()
                result = await asyncio.to_thread(log_.sink.write_labels, model, parsed)
        except Exception:
            log.exception("cannot store labels for model %s", model)
            return JSONResponse({"error": "labels cannot be stored now; try again later"}, status_code=503)
        if result.unknown:
            return _unknown(model, result)
        return JSONResponse({"stored": result.stored, "unchanged": result.unchanged})

    return router


def _parse(body: bytes) -> list[Label] | JSONResponse:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return JSONResponse({"error": f"malformed JSON body: {exc}"}, status_code=400)
    try:
        if isinstance(doc, dict) and "labels" in doc:
            return [label.to_label() for label in FeedbackIn.model_validate(doc).labels]
        if isinstance(doc, dict):
            return [LabelIn.model_validate(doc).to_label()]
    except ValidationError as exc:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)
    return JSONResponse(
        {"error": 'invalid request: body must be an object, {"id": ..., "value": ...} or {"labels": [...]}'},
        status_code=422,
    )


def _validation_message(exc: ValidationError) -> str:
    """One line per problem, naming the field as the other routes do: "body.labels.2.id: Field required"."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in ("body", *error.get("loc", ())))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _unknown(model: str, result: LabelResult) -> JSONResponse:
    shown = list(result.unknown[:UNKNOWN_SHOWN])
    more = len(result.unknown) - len(shown)
    message = f"unknown prediction ids for model '{model}': {shown}" + (f" and {more} more" if more else "")
    return JSONResponse(
        {"error": message + "; nothing was stored", "unknown": list(result.unknown[:UNKNOWN_LISTED])},
        status_code=404,
    )
