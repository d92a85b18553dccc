"""``app.client`` without a server: retries that honour ``Retry-After`` (seconds or a date) and
stay bounded, errors in both shapes, typed answers, webhook signatures (httpx's mock
transport stands in for the API)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import orjson
import pytest

from app.client import (
    ApiError,
    AsyncClient,
    Client,
    Job,
    Prediction,
    Retries,
    WebhookError,
    parse_webhook,
    verify_webhook,
)
from app.delivery.webhook import sign

QUEUED = {
    "id": "pred_1",
    "status": "queued",
    "model": "m",
    "created_at": "2026-12-04T10:00:00+00:00",
}


def flaky(answers: list[httpx.Response], seen: list[float]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        return answers.pop(0)

    return httpx.MockTransport(handle)


def limited(retry_after: str) -> httpx.Response:
    body = {"error": {"code": "tenant_rate", "message": "slow down"}}
    return httpx.Response(429, json=body, headers={"Retry-After": retry_after})


def test_429_is_retried_after_its_retry_after_and_then_succeeds() -> None:
    seen: list[float] = []
    answers = [limited("0.3"), httpx.Response(202, json=QUEUED)]
    with Client("http://x", transport=flaky(answers, seen)) as c:
        p = c.submit("m", {"text": "hi"})
    assert isinstance(p, Prediction) and p.status == "queued" and not p.is_final
    assert p.created_at == datetime(2026, 12, 4, 10, tzinfo=UTC)
    assert seen[1] - seen[0] >= 0.29


def test_an_http_date_is_a_retry_after_too() -> None:
    seen: list[float] = []
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    answers = [httpx.Response(503, headers={"Retry-After": when}), httpx.Response(202, json=QUEUED)]
    with Client("http://x", transport=flaky(answers, seen)) as c:
        c.submit("m", {"text": "hi"})
    assert seen[1] - seen[0] >= 0.5  # the date has a one-second resolution


def test_retries_are_bounded_in_number_and_in_wait() -> None:
    seen: list[float] = []
    answers = [limited("0") for _ in range(5)]
    retries = Retries(max_retries=2)
    with (
        Client("http://x", transport=flaky(answers, seen), retries=retries) as c,
        pytest.raises(ApiError) as exc,
    ):
        c.submit("m", {"text": "hi"})
    assert len(seen) == 3 and exc.value.status == 429 and exc.value.code == "tenant_rate"
    assert exc.value.retry_after == 0

    seen.clear()
    answers = [limited("120"), httpx.Response(202, json=QUEUED)]
    with (  # 120 s > max_wait_s
        Client("http://x", transport=flaky(answers, seen)) as c,
        pytest.raises(ApiError) as exc,
    ):
        c.submit("m", {"text": "hi"})
    assert len(seen) == 1 and exc.value.retry_after == 120


def test_errors_of_either_shape_and_async_the_same() -> None:
    openai_shape = {"error": {"message": "no", "type": "invalid_request_error", "code": None}}
    answers = [httpx.Response(404, json={"error": {"code": "not_found", "message": "gone"}})]
    with (
        Client("http://x", transport=flaky(answers, [])) as c,
        pytest.raises(ApiError) as missing,
    ):
        c.get("pred_x")
    assert str(missing.value) == "404 not_found: gone"

    async def run() -> Job:
        answers = [
            httpx.Response(400, json=openai_shape),
            limited("0.1"),
            httpx.Response(
                200,
                json={
                    "id": "job_1",
                    "status": "running",
                    "request_counts": {"total": 3, "succeeded": 1},
                },
            ),
        ]

        def handle(request: httpx.Request) -> httpx.Response:
            return answers.pop(0)

        async with AsyncClient("http://x", transport=httpx.MockTransport(handle)) as c:
            with pytest.raises(ApiError) as exc:
                await c.get_job("job_1")
            assert exc.value.code == "invalid_request_error" and exc.value.message == "no"
            return await c.get_job("job_1")

    job = asyncio.run(run())
    assert job.request_counts.total == 3 and job.request_counts.done == 1 and not job.is_final


def test_webhook_signatures() -> None:
    body = orjson.dumps({"id": "job_1", "object": "job", "status": "succeeded"})
    header = sign("s3cret", body, int(time.time()))
    assert verify_webhook("s3cret", header, body)
    assert not verify_webhook("other", header, body)
    assert not verify_webhook("s3cret", header, body + b" ")
    old = sign("s3cret", body, int(time.time()) - 3600)
    assert not verify_webhook("s3cret", old, body)
    got: Any = parse_webhook("s3cret", header, body)
    assert isinstance(got, Job) and got.is_final
    with pytest.raises(WebhookError):
        parse_webhook("other", header, body)
