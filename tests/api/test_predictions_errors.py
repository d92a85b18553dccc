"""Every bad input gets a clear 4xx body, and nothing else is lost (a real API process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from app.db.models import Prediction
from tests.conftest import Stack, StackFactory

TEXT = {"model": "minilm-embed", "input": {"text": "my invoice is wrong"}}
CHURN = {"model": "churn-risk", "input": {"features": [1.0] * 12}}


@pytest.fixture(scope="module")
def api_only(module_stacks: StackFactory, redis_url: str) -> Stack:
    """An API without workers: requests stay queued, which is what these tests want."""
    return module_stacks(
        redis_url,
        workers=0,
        max_body_bytes=20_000,
        max_text_chars=2_000,
        api_keys='{"key-a": "tenant-a", "key-b": "tenant-b", "key-c": "tenant-c"}',
    )


def post(stack: Stack, body: Any, key: str = "key-a", **kw: Any) -> Any:
    with stack.client(headers={"Authorization": f"Bearer {key}"}) as c:
        return c.post("/v1/predictions", json=body, **kw)


def error(resp: Any, status: int, code: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    if code is not None:
        assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        ({"model": "nope", "input": {"text": "x"}}, "unknown_model", "unknown model 'nope'"),
        (
            {"model": "minilm-embed", "input": {"text": 42}},
            "invalid_input",
            "input.text must be a string",
        ),
        ({"model": "minilm-embed", "input": {}}, "invalid_input", "input.text is required"),
        ({"model": "minilm-embed", "input": {"text": "   "}}, "invalid_input", "must not be empty"),
        (
            {"model": "minilm-embed", "input": {"text": "a" * 2001}},
            "text_too_long",
            "limit is 2000",
        ),
        (
            {"model": "minilm-embed", "input": {"text": "x", "lang": "en"}},
            "invalid_input",
            "unknown field",
        ),
        (
            {"model": "minilm-embed", "input": "just a string"},
            "invalid_input",
            "must be a JSON object",
        ),
        (
            {"model": "churn-risk", "input": {"features": [1.0] * 11}},
            "invalid_input",
            "exactly 12 numbers, got 11",
        ),
        (
            {"model": "churn-risk", "input": {"features": [1.0] * 11 + ["x"]}},
            "invalid_input",
            "features[11] must be a number",
        ),
        (
            {"model": "churn-risk", "input": {"features": [True] + [1.0] * 11}},
            "invalid_input",
            "features[0] must be a number",
        ),
        ({"model": "minilm-embed"}, "invalid_input", "exactly one of 'input' or 'inputs'"),
        ({**TEXT, "inputs": [{"text": "b"}]}, "invalid_input", "exactly one of"),
        ({"model": "minilm-embed", "inputs": []}, "invalid_input", "inputs must not be empty"),
        (
            {"model": "minilm-embed", "inputs": [{"text": "ok"}, {"text": ""}]},
            "invalid_input",
            "inputs[1].text",
        ),
        ({**TEXT, "priority": "urgent"}, "invalid_input", "priority"),
        ({**TEXT, "deadline_s": -1}, "invalid_input", "deadline_s"),
        ({**TEXT, "callback_url": "ftp://x"}, "invalid_input", "callback_url"),
        ({**TEXT, "surprise": 1}, "invalid_input", "surprise"),
    ],
)
def test_invalid_input_is_422(api_only: Stack, body: Any, code: str, needle: str) -> None:
    assert needle in error(post(api_only, body), 422, code)


def test_non_finite_numbers_and_broken_json_are_422(api_only: Stack) -> None:
    with api_only.client(headers={"Authorization": "Bearer key-a"}) as c:
        for raw in (
            b'{"model": "churn-risk", "input": {"features": [NaN, 1,1,1,1,1,1,1,1,1,1,1]}}',
            b'{"model": "churn-risk", "input": {"features": [1e999, 1,1,1,1,1,1,1,1,1,1,1]}}',
            b'{"model": ',
            b"",
            b"[1, 2]",
        ):
            resp = c.post(
                "/v1/predictions", content=raw, headers={"content-type": "application/json"}
            )
            error(resp, 422, "invalid_input")


def test_body_over_the_limit_is_413(api_only: Stack) -> None:
    big = {"model": "minilm-embed", "inputs": [{"text": "x" * 1500}] * 20}
    assert "over the limit" in error(post(api_only, big), 413, "payload_too_large")


def test_a_streamed_body_over_the_limit_is_413_too(api_only: Stack) -> None:
    """No Content-Length (chunked): the limit is counted while the body comes in."""

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "minilm-embed", "inputs": ['
        for _ in range(30):
            yield b'{"text": "' + b"x" * 1000 + b'"},'
        yield b'{"text": "x"}]}'

    with api_only.client(headers={"Authorization": "Bearer key-a"}) as c:
        resp = c.post(
            "/v1/predictions", content=chunks(), headers={"content-type": "application/json"}
        )
    assert "content-length" not in resp.request.headers
    assert "over the limit" in error(resp, 413, "payload_too_large")


def test_auth_and_tenancy(api_only: Stack) -> None:
    with api_only.client() as c:
        error(c.post("/v1/predictions", json=TEXT), 401, "unauthorized")
        error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    created = post(api_only, TEXT)
    assert created.status_code == 202
    pid = created.json()["id"]
    assert created.headers["location"] == f"/v1/predictions/{pid}"
    with api_only.client(headers={"Authorization": "Bearer key-b"}) as c:
        error(c.get(f"/v1/predictions/{pid}"), 404, "not_found")
        error(c.delete(f"/v1/predictions/{pid}"), 404, "not_found")
    with api_only.client(headers={"Authorization": "Bearer key-a"}) as c:
        assert c.get(f"/v1/predictions/{pid}").json()["status"] == "queued"
        error(c.get("/v1/predictions/pred_doesnotexist"), 404, "not_found")
        error(c.get(f"/v1/predictions/{pid}", params={"wait": 31}), 422, "invalid_input")


def test_idempotency_key(api_only: Stack) -> None:
    first = post(api_only, TEXT, headers={"Idempotency-Key": "abc"})
    again = post(api_only, TEXT, headers={"Idempotency-Key": "abc"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other_tenant = post(api_only, TEXT, key="key-b", headers={"Idempotency-Key": "abc"})
    assert other_tenant.json()["id"] != first.json()["id"]
    changed = post(
        api_only, {**TEXT, "input": {"text": "something else"}}, headers={"Idempotency-Key": "abc"}
    )
    error(changed, 409, "idempotency_conflict")
    many = {"model": "churn-risk", "inputs": [{"features": [float(i)] * 12} for i in range(3)]}
    m1 = post(api_only, many, headers={"Idempotency-Key": "batch-1"}).json()["predictions"]
    m2 = post(api_only, many, headers={"Idempotency-Key": "batch-1"}).json()["predictions"]
    assert [p["id"] for p in m1] == [p["id"] for p in m2] and len(m1) == 3


def test_cancel(api_only: Stack) -> None:
    pid = post(api_only, CHURN).json()["id"]
    with api_only.client(headers={"Authorization": "Bearer key-a"}) as c:
        resp = c.delete(f"/v1/predictions/{pid}")
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
        error(c.delete(f"/v1/predictions/{pid}"), 409, "not_cancellable")
        assert c.get(f"/v1/predictions/{pid}").json()["status"] == "cancelled"


def test_errors_lose_nothing(api_only: Stack, pg_url: str) -> None:
    """Bad requests store nothing; the good ones around them are all stored."""
    good = 0
    for i in range(6):
        ok = post(api_only, {"model": "churn-risk", "input": {"features": [i] * 12}}, key="key-c")
        assert ok.status_code == 202
        good += 1
        post(api_only, {"model": "churn-risk", "input": {"features": [i] * 3}}, key="key-c")
        post(api_only, {"model": "nope", "input": {}}, key="key-c")
    bad_many = {"model": "minilm-embed", "inputs": [{"text": "a"}, {"text": 1}]}
    assert post(api_only, bad_many, key="key-c").status_code == 422  # the valid one is not kept
    churn = {"model": "churn-risk", "input": {"features": [1.0] * 12}}
    for bad in ("wait=31", "wait=-1", "wait=soon", "respond-async, wait=nan"):
        r = post(api_only, churn, key="key-c", headers={"Prefer": bad})
        assert "is not a number of seconds from 0 to 30" in error(r, 422, "invalid_input")
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        stored = conn.scalar(
            select(func.count()).select_from(Prediction).where(Prediction.tenant == "tenant-c")
        )
    engine.dispose()
    assert stored == good


def test_models_listing(api_only: Stack) -> None:
    with api_only.client(headers={"Authorization": "Bearer key-a"}) as c:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
    assert {"minilm-embed", "ticket-triage", "churn-risk"} <= set(models)
    for m in models.values():
        assert {
            "name",
            "version",
            "kind",
            "input_schema",
            "output_schema",
            "max_batch_size",
            "max_delay_ms",
            "sha256",
        } <= set(m)
    assert models["churn-risk"]["kind"] == "tabular"


def test_prefer_wait_on_a_request_that_does_not_finish(api_only: Stack) -> None:
    """No worker here: ``Prefer: wait`` holds the POST for the wait, then answers 202."""
    t0 = time.monotonic()
    r = post(api_only, CHURN, headers={"Prefer": "wait=0.5"})
    assert time.monotonic() - t0 >= 0.45
    assert r.status_code == 202 and r.headers["preference-applied"] == "wait=0.5"
    body = r.json()
    assert body["status"] == "queued" and body["model"] == "churn-risk"
    assert r.headers["location"] == f"/v1/predictions/{body['id']}"
    # other preferences are ignored (RFC 7240): a plain 202 at once
    plain = post(api_only, CHURN, headers={"Prefer": "respond-async, return=minimal"})
    assert plain.status_code == 202 and "preference-applied" not in plain.headers
    assert set(plain.json()) == {"id", "status", "model", "created_at"}
    # several inputs: the preference does not apply
    many = {"model": "churn-risk", "inputs": [{"features": [1.0] * 12}] * 2}
    both = post(api_only, many, headers={"Prefer": "wait=5"})
    assert both.status_code == 202 and "preference-applied" not in both.headers
    assert [p["status"] for p in both.json()["predictions"]] == ["queued", "queued"]


def test_header_limits_and_the_documented_route(api_only: Stack) -> None:
    """``POST /v1/predictions`` is served by a plain Starlette endpoint; it checks what the
    documented FastAPI route declares, and the OpenAPI document still describes it."""
    for name in ("Idempotency-Key", "Prefer"):
        r = post(api_only, CHURN, headers={name: "x" * 256})
        assert "at most 255 characters" in error(r, 422, "invalid_input")
    r = post(api_only, CHURN, headers={"Idempotency-Key": "k" * 255})  # was a 500: key + "#0"
    again = post(api_only, CHURN, headers={"Idempotency-Key": "k" * 255})
    assert r.status_code == again.status_code == 202 and r.json()["id"] == again.json()["id"]
    with api_only.client() as c:
        doc = c.get("/openapi.json").json()
        assert "post" in doc["paths"]["/v1/predictions"]
        error(c.put("/v1/predictions", json=CHURN), 405)


def test_openapi_documents_the_one_submit_handler(api_only: Stack) -> None:
    """``POST /v1/predictions`` is one handler; its body and headers are still in OpenAPI."""
    with api_only.client() as c:
        doc = c.get("/openapi.json").json()
    op = doc["paths"]["/v1/predictions"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/PredictionCreate"
    schema = doc["components"]["schemas"]["PredictionCreate"]
    assert {"model", "input", "inputs", "callback_url", "priority"} <= set(schema["properties"])
    assert {p["name"] for p in op["parameters"]} == {"Idempotency-Key", "Prefer"}


def test_the_direct_route_keeps_the_middlewares_metrics_and_trace(api_only: Stack) -> None:
    """``POST /v1/predictions`` is served past FastAPI (``api/fastpath.py``) and still carries
    a ``traceparent``, lands in the latency histogram under its route, and answers errors and
    other methods as every route does."""
    ok = post(api_only, TEXT)
    bad = post(api_only, {"model": "minilm-embed", "input": {"text": ""}})
    assert ok.status_code == 202 and bad.status_code == 422
    for resp in (ok, bad):
        assert resp.headers["traceparent"].startswith("00-")
    with api_only.client(headers={"Authorization": "Bearer key-a"}) as c:
        error(c.put("/v1/predictions", json=TEXT), 405, "method_not_allowed")
        metrics = c.get("/metrics").text
    for status in ("202", "422"):
        line = f'inferq_http_request_seconds_count{{method="POST",route="/v1/predictions",status="{status}"}}'
        assert line in metrics, status
