"""The one place where errors become HTTP answers: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.responses import JSON
from app import errors
from app.predictions.admission import OverLimit

log = logging.getLogger(__name__)

DB_RETRY_AFTER_S = 2
"""``Retry-After`` of a 503 while the database is away (a restart takes seconds)."""

STATUS: list[tuple[type[errors.InferqError], int]] = [
    (errors.PayloadTooLarge, 413),
    (errors.UnknownModel, 422),
    (errors.InvalidInput, 422),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.Unauthorized, 401),
    (errors.RateLimited, 429),
    (errors.ModelNotReady, 503),
    (errors.DependencyDown, 503),
]


def error_body(code: str, message: str, status: int, **extra: object) -> JSON:
    return JSON({"error": {"code": code, "message": message, **extra}}, status_code=status)


def allowed_methods(request: Request) -> str:
    """Every method the request's path takes (RFC 9110 ``Allow``). Starlette's 405 names only
    the methods of the first route whose path matched, not those of the others on the path."""
    routes = request.app.router.routes
    return ", ".join(
        m
        for m in ALLOWABLE
        if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)
    )


ALLOWABLE = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def status_for(exc: errors.InferqError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.InferqError)
    async def _inferq(request: Request, exc: errors.InferqError) -> JSON:
        if isinstance(exc, OverLimit):
            resp = error_body(exc.code, exc.message, 429, bound=exc.bound, limit=exc.limit)
            resp.headers["Retry-After"] = str(exc.retry_after)
            return resp
        resp = error_body(exc.code, exc.message, status_for(exc))
        if isinstance(exc, errors.Unauthorized):
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSON:
        details = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(x for x in first["loc"] if x != "body") or "body"
        return error_body("invalid_input", f"{where}: {first['msg']}", 422, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSON:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        resp = error_body(code, str(exc.detail), exc.status_code)
        resp.headers.update(exc.headers or {})
        if exc.status_code == 405:
            resp.headers["Allow"] = allowed_methods(request)
        return resp

    @app.exception_handler(OperationalError)
    async def _db_down(request: Request, exc: OperationalError) -> JSON:
        log.error("database unavailable", extra={"error": str(exc)[:300]})
        resp = error_body("dependency_down", "the database is unavailable; try again", 503)
        resp.headers["Retry-After"] = str(DB_RETRY_AFTER_S)
        return resp

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSON:
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_body("internal_error", "internal error", 500)
