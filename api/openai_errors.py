"""Errors in OpenAI's shape on the OpenAI-compatible routes, and only there.

The rest of the API answers ``{"error": {"code", "message"}}`` (``api.errors``); a router built
with ``route_class=OpenAIRoute`` answers ``{"error": {"message", "type", "param", "code"}}``
with the status OpenAI would use (``app.openai_compat.wire``), so the official SDKs raise their
own exception classes with the message. Caught around the route's handler, so what FastAPI
raises there too (a bad query parameter, a missing API key) comes out in the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from api.responses import JSON
from app import errors
from app.openai_compat import wire
from app.predictions.admission import OverLimit

log = logging.getLogger(__name__)

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class Timeout(errors.InferqError):
    """What was asked did not end within the route's wait (the work goes on)."""

    code = "timeout"


def openai_error(status: int, message: str, type_: str, code: str | None, **extra: Any) -> JSON:
    return JSON(wire.error_body(message, type_, code, **extra), status_code=status)


def render(request: Request, exc: Exception) -> Response:
    """The OpenAI-shaped answer to ``exc``."""
    if isinstance(exc, Timeout):
        resp = openai_error(wire.TIMEOUT_STATUS, exc.message, "server_error", "timeout")
        # a retry without an Idempotency-Key would submit the work again
        retry = "true" if request.headers.get("idempotency-key") else "false"
        resp.headers["x-should-retry"] = retry
        return resp
    if isinstance(exc, errors.InferqError):
        status, body = wire.render_error(exc)
        resp = JSON(body, status_code=status)
        if isinstance(exc, OverLimit):
            resp.headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, errors.Unauthorized):
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        return openai_error(400, f"{where}: {first.get('msg')}", "invalid_request_error", None)
    if isinstance(exc, HTTPException):
        return openai_error(exc.status_code, str(exc.detail), "invalid_request_error", None)
    if isinstance(exc, OperationalError):
        log.error("database unavailable", extra={"error": str(exc)[:300]})
        return openai_error(503, "the database is unavailable; try again", "server_error", None)
    log.exception("unhandled error", extra={"path": request.url.path}, exc_info=exc)
    return openai_error(500, "internal error", "server_error", None)


class OpenAIRoute(APIRoute):
    """A route whose every error is answered in OpenAI's shape."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return render(request, exc)

        return route
