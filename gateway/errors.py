"""Domain errors. They know nothing of HTTP or gRPC: each adapter maps them at its edge.

Adapters walk the class hierarchy (most specific first), so a new subclass inherits its
parent's status until it gets one of its own.
"""

from __future__ import annotations


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
