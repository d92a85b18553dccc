"""OpenAPI for routes that read their own body (for speed): the body and headers they take are
declared here, so the document stays the contract while the handler skips FastAPI's parsing."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

_SCHEMAS: dict[str, type[BaseModel]] = {}


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


def install(app: FastAPI) -> None:
    """Add the schemas that ``json_body`` referred to to the app's OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, model in _SCHEMAS.items():
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[name] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
