"""OpenAI's wire shapes that are not one endpoint's: the error body and the unix timestamps.

OpenAI answers ``{"error": {"message", "type", "param", "code"}}`` with the status its SDKs
map to their exception classes (400 ``BadRequestError``, 404 ``NotFoundError``, 429
``RateLimitError``, ...). The status lives here, not in ``api/``, because a batch's output file
carries it too (``response.status_code`` of each line).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from app import errors
from app.predictions.admission import OverLimit

M = TypeVar("M", bound=BaseModel)

# (error class, status, type); the first match wins, so subclasses come first
STATUS: list[tuple[type[errors.InferqError], int, str]] = [
    (errors.PayloadTooLarge, 413, "invalid_request_error"),
    (errors.UnknownModel, 404, "invalid_request_error"),
    (errors.InvalidInput, 400, "invalid_request_error"),
    (errors.NotFound, 404, "invalid_request_error"),
    (errors.Conflict, 409, "invalid_request_error"),
    (errors.Unauthorized, 401, "invalid_request_error"),
    (errors.RateLimited, 429, "requests"),
    (errors.ModelNotReady, 503, "server_error"),
    (errors.DependencyDown, 503, "server_error"),
]

CODES = {"unknown_model": "model_not_found", "unauthorized": "invalid_api_key"}
"""inferq's codes where OpenAI has its own name for the same error."""

TIMEOUT_STATUS = 504


def error_body(message: str, type_: str, code: str | None, **extra: Any) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code, **extra}}


def status_of(exc: errors.InferqError) -> tuple[int, str]:
    """The status and OpenAI error type of an inferq error (500 ``server_error`` if unknown)."""
    for cls, status, type_ in STATUS:
        if isinstance(exc, cls):
            return status, type_
    return 500, "server_error"


def render_error(exc: errors.InferqError) -> tuple[int, dict[str, Any]]:
    """The status and body that answer ``exc``; an ``OverLimit`` names its bound."""
    status, type_ = status_of(exc)
    if isinstance(exc, OverLimit):
        extra = {"bound": exc.bound, "limit": exc.limit}
        return status, error_body(exc.message, type_, "rate_limit_exceeded", **extra)
    return status, error_body(exc.message, type_, CODES.get(exc.code, exc.code))


def result_error(code: str, message: str) -> tuple[int, dict[str, Any]]:
    """The status and body for a prediction (or job line) that ended with error ``code``."""
    if code in ("invalid_input", "text_too_long"):
        return 400, error_body(message, "invalid_request_error", code)
    if code == "expired":
        return TIMEOUT_STATUS, error_body(message, "server_error", "timeout")
    return 500, error_body(message, "server_error", code)


def unix(when: datetime | None) -> int | None:
    """Unix seconds, as OpenAI writes every timestamp."""
    return None if when is None else int(when.timestamp())


def parse_model(data: Any, model: type[M], where: str = "body") -> M:
    """Validate decoded JSON as ``model``; ``InvalidInput`` naming the field (an unknown field
    in OpenAI's words) otherwise."""
    if not isinstance(data, dict):
        raise errors.InvalidInput(f"{where} must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or where
        if err["type"] == "extra_forbidden":
            raise errors.InvalidInput(f"Unrecognized request argument supplied: {field}") from exc
        raise errors.InvalidInput(f"{field}: {err['msg']}") from exc


def parse_body(raw: bytes, model: type[M]) -> M:
    """A JSON request body as ``model``."""
    if not raw:
        raise errors.InvalidInput("the request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidInput(f"the body is not valid JSON: {exc}") from exc
    return parse_model(data, model)
