"""Domain errors. They know nothing of HTTP or gRPC: each adapter maps them at its edge.

Adapters walk the class hierarchy (most specific first), so a new subclass inherits its
parent's status until it gets one of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitors.records import SinkUnavailable


class SluiceError(Exception):
    """Base of every error a caller may see; the message is shown to the caller verbatim."""


class InvalidInput(SluiceError):
    """The request is malformed or does not match the model: names, datatypes, shapes, data."""


class PayloadTooLarge(InvalidInput):
    """The body is over the configured limit."""


class ModelNotFound(SluiceError):
    """No such model, or no such version of it."""


class ModelNotReady(SluiceError):
    """The model exists but cannot serve now (loading, failed to load, unloading)."""


class Overloaded(SluiceError):
    """The version's queue is full; the caller should back off and retry."""


class QuotaExceeded(Overloaded):
    """The caller's inference key used up its quota (requests per second, burst); retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(SluiceError):
    """The request's timeout passed before it was answered."""


class ShuttingDown(SluiceError):
    """The gateway is draining and takes no new requests."""


class InferenceFailed(SluiceError):
    """The runtime raised while running this request."""


class Conflict(SluiceError):
    """The request clashes with the current state (a second rollout on a model, a version in use)."""


class Unauthorized(SluiceError):
    """No credentials were sent (admin API: no bearer token)."""


class Forbidden(SluiceError):
    """Credentials were sent but are not valid."""


class ControlPlaneUnavailable(SluiceError):
    """No control-plane leader can take the change now (none elected yet, or it cannot be reached); retry."""


class StoreUnavailable(ControlPlaneUnavailable, SinkUnavailable):
    """The state database cannot be reached or written (cut off, its disk full): nothing was changed; retry.
    For the prediction log it is a `SinkUnavailable`: the batch waits in the queue and is tried again."""


class RepositoryUnavailable(SluiceError):
    """The model repository cannot be read now (its object store is away): nothing was changed; retry."""


class NotLeader(ControlPlaneUnavailable):
    """This replica lost the leader lease: its write was refused (fenced) so a stale leader changes nothing."""


@dataclass(frozen=True)
class Mapping:
    """What one error class means at each edge: the HTTP status, the gRPC status code's name, and the
    outcome label of `sluice_requests_total` (what the request did, for metrics and the prediction log)."""

    http: int
    grpc: str
    outcome: str


INTERNAL = Mapping(500, "INTERNAL", "error")

ERRORS: tuple[tuple[type[BaseException], Mapping], ...] = (
    (PayloadTooLarge, Mapping(413, "INVALID_ARGUMENT", "invalid")),
    (InvalidInput, Mapping(400, "INVALID_ARGUMENT", "invalid")),
    (ModelNotFound, Mapping(404, "NOT_FOUND", "not_found")),
    (ModelNotReady, Mapping(503, "UNAVAILABLE", "not_ready")),
    (ShuttingDown, Mapping(503, "UNAVAILABLE", "draining")),
    (QuotaExceeded, Mapping(429, "RESOURCE_EXHAUSTED", "throttled")),
    (Overloaded, Mapping(429, "RESOURCE_EXHAUSTED", "overloaded")),
    (DeadlineExceeded, Mapping(504, "DEADLINE_EXCEEDED", "timeout")),
    (InferenceFailed, INTERNAL),
    (Conflict, Mapping(409, "FAILED_PRECONDITION", "error")),
    (ControlPlaneUnavailable, Mapping(503, "UNAVAILABLE", "error")),
    (RepositoryUnavailable, Mapping(503, "UNAVAILABLE", "error")),
    (Unauthorized, Mapping(401, "UNAUTHENTICATED", "error")),
    (Forbidden, Mapping(403, "PERMISSION_DENIED", "error")),
)
"""The one table, most specific class first: the first `isinstance` match wins, so a new subclass maps
as its parent until it gets a row of its own. Anything else is INTERNAL (500)."""


def mapping_of(exc: BaseException) -> Mapping:
    for cls, mapping in ERRORS:
        if isinstance(exc, cls):
            return mapping
    return INTERNAL


def error_for_status(http: int, message: str) -> SluiceError:
    """The domain error an HTTP status means (the first row of the table with it): a change forwarded to the
    leader over HTTP is answered to a gRPC caller with the same code as to an HTTP one."""
    for cls, mapping in ERRORS:
        if mapping.http == http and issubclass(cls, SluiceError) and cls is not QuotaExceeded:
            return cls(message)
    return SluiceError(message)
