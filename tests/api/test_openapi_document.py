"""The OpenAPI document declares what the routes really answer (in process, no services)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from app.settings import build_settings

METHODS = ("get", "put", "post", "delete", "patch")
NOT_JSON = {"/metrics", "/v1/jobs/{job_id}/results", "/v1/files/{file_id}/content"}
"""Routes whose success body is text (Prometheus, JSONL, CSV), declared so."""


def document(**settings: Any) -> dict[str, Any]:
    return create_app(build_settings(**settings)).openapi()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, item[m]) for p, item in doc["paths"].items() for m in METHODS if m in item]


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document(api_keys={"key-a": "tenant-a"})


def test_json_routes_declare_their_body(doc: dict[str, Any]) -> None:
    for method, path, op in operations(doc):
        for status, resp in op["responses"].items():
            for media, content in resp.get("content", {}).items():
                schema = content.get("schema", {})
                if path in NOT_JSON and status.startswith("2"):
                    assert media != "application/json", (method, path)
                    continue
                assert media == "application/json", (method, path, status)
                assert "$ref" in schema or "anyOf" in schema, (method, path, status, schema)


def test_every_operation_declares_its_errors(doc: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for method, path, op in operations(doc):
        errors = {s: r for s, r in op["responses"].items() if s[0] in "45"}
        openai = "openai" in op.get("tags", ())
        if path.startswith("/v1/"):
            assert "401" in errors, (method, path)
            assert op["security"] == [{"bearer": []}]
        if path not in {"/healthz", "/metrics", "/v1/models"}:
            assert "503" in errors, (method, path)
        if "requestBody" in op:
            assert {"413", "400" if openai else "422"} <= set(errors), (method, path)
        if "{" in path:
            assert "404" in errors, (method, path)
        want = "OpenAIError" if openai else "Error"
        for status, resp in errors.items():
            if path == "/readyz":
                continue
            ref = resp["content"]["application/json"]["schema"]["$ref"]
            assert ref == f"#/components/schemas/{want}", (method, path, status)
        assert "422" not in errors or not openai, (method, path)


def test_without_api_keys_no_route_answers_401() -> None:
    doc = document(api_keys={})
    assert "securitySchemes" not in doc["components"]
    for method, path, op in operations(doc):
        assert "401" not in op["responses"] or path.startswith("/hooks/"), (method, path)


def test_bodies_read_by_hand_are_declared(doc: dict[str, Any]) -> None:
    content = {
        (m, p): set(op.get("requestBody", {}).get("content", {}))
        for m, p, op in operations(doc)
        if m in ("post", "patch")
    }
    assert content[("post", "/v1/jobs")] == {"application/json", "multipart/form-data"}
    assert content[("post", "/v1/files")] == {"multipart/form-data"}
    for key in [
        ("post", "/v1/predictions"),
        ("patch", "/v1/schedules/{schedule_id}"),
        ("patch", "/v1/integrations/{integration_id}"),
        ("post", "/v1/embeddings"),
    ]:
        assert content[key] == {"application/json"}, key


def test_405_lists_every_method_of_the_path() -> None:
    client = TestClient(create_app(build_settings()))  # no lifespan: routing alone
    resp = client.put("/v1/predictions/p-1")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "DELETE, GET"
    assert resp.json()["error"]["code"] == "method_not_allowed"
    assert client.delete("/v1/jobs").headers["allow"] == "GET, POST"
