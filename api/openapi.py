"""The OpenAPI document as the contract: what FastAPI cannot see is declared here.

Routes that read their own body (for speed) declare it with ``json_body`` or ``multipart_body``,
so the document stays the contract while the handler skips FastAPI's parsing. Each route names
the error statuses it answers with ``errors`` (or ``openai_errors`` on the OpenAI-compatible
routes, which answer in OpenAI's shape); ``install`` adds what every route of a kind answers
(401 with auth on, 503 when the database is down, 413 over the body limit) and replaces
FastAPI's own 422 schema by the one the API really sends (``api.errors``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

_SCHEMAS: dict[str, type[BaseModel]] = {}


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``code`` to branch on and a ``message`` for people (some
    errors add fields, e.g. ``details`` of a 422 or ``bound`` and ``limit`` of a 429)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class Error(BaseModel):
    """Every error of the API outside the OpenAI-compatible routes."""

    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    """OpenAI's error object."""

    model_config = ConfigDict(extra="allow")

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """Every error of the OpenAI-compatible routes (``/v1/embeddings``, files, batches)."""

    error: OpenAIErrorDetail


WHY = {
    400: "The request is not valid (OpenAI's status for invalid input).",
    401: "No API key, or one this deployment does not know.",
    404: "Not found: unknown, another tenant's, or expired.",
    405: "The path does not take this method (``Allow`` lists those it takes).",
    409: "Conflict: the object's state does not allow it, or an idempotency key was reused.",
    413: "The body (or the uploaded file) is over the limit.",
    415: "The Content-Type is not one this route reads.",
    422: "The input is not valid.",
    429: "Over a queue bound or the rate limit; nothing was stored (see ``Retry-After``).",
    500: "The model failed on the input (OpenAI's ``server_error``).",
    503: "A dependency (the database, the model) is not available; try again.",
    504: "The work did not end within the route's wait; it goes on.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}


def _responses(model: type[BaseModel], statuses: tuple[int, ...]) -> dict[int | str, Any]:
    out: dict[int | str, Any] = {}
    for status in statuses:
        out[status] = {"model": model, "description": WHY[status]}
        if status == 429:
            out[status]["headers"] = RETRY_AFTER
    return out


def errors(*statuses: int) -> dict[int | str, Any]:
    """``responses`` of a route that answers these error statuses with ``Error``."""
    return _responses(Error, statuses)


def openai_errors(*statuses: int) -> dict[int | str, Any]:
    """``responses`` of an OpenAI-compatible route that answers these with ``OpenAIError``."""
    return _responses(OpenAIError, statuses)


def multipart_body(fields: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    """``openapi_extra`` for a route that streams a ``multipart/form-data`` body itself;
    ``fields`` maps each form field to its JSON schema (a file is ``format: binary``)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": fields,
                        "required": required,
                        "additionalProperties": False,
                    }
                }
            },
        }
    }


def json_body(model: type[BaseModel], headers: dict[str, int] | None = None) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` as its JSON body and takes the optional
    ``headers`` (name -> longest value accepted)."""
    _SCHEMAS[model.__name__] = model
    extra: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }
    if headers:
        extra["parameters"] = [
            {
                "name": n,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": m},
            }
            for n, m in headers.items()
        ]
    return extra


def install(app: FastAPI, *, auth: bool = False) -> None:
    """Finish the app's OpenAPI document once, when it is first asked for: the schemas that
    ``json_body`` referred to, the errors every route of a kind answers, and (``auth``: API
    keys are on) the bearer scheme every ``/v1`` route requires."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, model in _SCHEMAS.items():
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[name] = schema
            _declare_errors(doc, auth=auth)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _operation_errors(path: str, op: dict[str, Any], *, auth: bool) -> None:
    openai = "openai" in op.get("tags", ())
    ref = {"$ref": f"#/components/schemas/{'OpenAIError' if openai else 'Error'}"}
    responses = op.setdefault("responses", {})
    if "422" in responses:
        # FastAPI's own validation error: the API answers it as an ``Error`` (422), or on an
        # OpenAI route as an ``OpenAIError`` with OpenAI's 400
        del responses["422"]
        responses.setdefault("400" if openai else "422", {})
    added = []
    if auth and path.startswith("/v1/"):
        added.append("401")
        op["security"] = [{"bearer": []}]
    if "requestBody" in op:
        added.append("413")
    if path not in NO_DATABASE:
        added.append("503")
    for status in added:
        responses.setdefault(status, {})
    for status, resp in responses.items():
        if status.startswith(("4", "5")) and "content" not in resp:
            resp["description"] = resp.get("description") or WHY[int(status)]
            resp["content"] = {"application/json": {"schema": ref}}


NO_DATABASE = {"/healthz", "/metrics", "/v1/models"}
"""Paths whose routes never touch the database (every other one answers 503 when it is down)."""
METHODS = ("get", "put", "post", "delete", "patch")


def _declare_errors(doc: dict[str, Any], *, auth: bool) -> None:
    components = doc["components"]
    schemas = components["schemas"]
    for model in (Error, OpenAIError):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    if auth:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key."}
        }
    for path, item in doc.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                _operation_errors(path, item[method], auth=auth)
    used = str(doc["paths"])
    for name in ("HTTPValidationError", "ValidationError"):
        if f"/{name}'" not in used:
            schemas.pop(name, None)
