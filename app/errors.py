"""One error tree for inferq. No HTTP in here: ``api/`` maps these to status codes."""

from __future__ import annotations


class InferqError(Exception):
    """Root of every error inferq raises on purpose."""

    code = "internal_error"
    retryable = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(InferqError):
    """The caller's input is not valid for the model (or the request is malformed)."""

    code = "invalid_input"


class PayloadTooLarge(InvalidInput):
    """The body or a field is over the configured limit."""

    code = "payload_too_large"


class NotFound(InferqError):
    """The object does not exist, or the caller may not see it."""

    code = "not_found"


class Conflict(InferqError):
    """The request conflicts with the current state (idempotency key reuse, cancel of a finished one)."""

    code = "conflict"


class Unauthorized(InferqError):
    """Missing or wrong credentials."""

    code = "unauthorized"


class RateLimited(InferqError):
    """Too many requests."""

    code = "rate_limited"


class ModelNotReady(InferqError):
    """The model is unknown to the registry, its file is missing or its checksum does not match."""

    code = "model_not_ready"


class UnknownModel(NotFound):
    """No model of that name is registered."""

    code = "unknown_model"


class Retryable(InferqError):
    """A transient failure: the same work may succeed later."""

    code = "retryable"
    retryable = True


class DependencyDown(Retryable):
    """The database or the broker cannot be reached."""

    code = "dependency_down"


class DeliveryFailed(Retryable):
    """A webhook or an integration's write-back did not get a 2xx answer."""

    code = "delivery_failed"


class InferenceFailed(InferqError):
    """The model raised on this input."""

    code = "inference_failed"
