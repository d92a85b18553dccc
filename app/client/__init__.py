"""A Python client of inferq's HTTP API, on httpx: ``Client`` (blocking) and ``AsyncClient``.

    from app.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as c:
        p = c.predict("ticket-triage", {"text": "My invoice is wrong"})
        job = c.create_job("churn-risk", "rows.csv", progress=lambda sent, total: ...)
        job = c.wait_job(job.id)
        for line in c.results(job.id):
            ...

Answers come back as dataclasses (``Prediction``, ``Job``, ``JobResult``, ``Schedule``,
``ScheduleRun``); an error answer raises ``ApiError`` with its status, code and message.
429 and 503 are retried after the server's ``Retry-After`` (bounded: ``Retries``).
``verify_webhook`` / ``parse_webhook`` check the signature of inferq's webhooks. The ``inferq
jobs`` and ``inferq schedules`` commands are built on ``Client``.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.client._core import Progress, Retries
from app.client.aio import AsyncClient
from app.client.models import (
    ApiError,
    ErrorInfo,
    Job,
    JobResult,
    Prediction,
    RequestCounts,
    Schedule,
    ScheduleRun,
)
from app.client.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ErrorInfo",
    "Job",
    "JobResult",
    "Prediction",
    "Progress",
    "RequestCounts",
    "Retries",
    "Schedule",
    "ScheduleRun",
    "WebhookError",
    "parse_webhook",
    "verify_webhook",
]


class WebhookError(Exception):
    """A webhook whose ``X-Inferq-Signature`` does not verify (wrong key, stale, altered)."""


def verify_webhook(secret: str, signature: str, body: bytes, *, tolerance_s: float = 300.0) -> bool:
    """True when ``signature`` (the ``X-Inferq-Signature`` header) signs ``body`` (the raw
    request body) with ``secret`` (``INFERQ_WEBHOOK_SECRET``) and is at most ``tolerance_s``
    old. The server's own check (``app.delivery.webhook.verify``)."""
    from app.delivery.webhook import verify

    return verify(secret, signature, body, tolerance_s=tolerance_s)


def parse_webhook(
    secret: str, signature: str, body: bytes, *, tolerance_s: float = 300.0
) -> Prediction | Job:
    """The prediction or job a verified webhook reports; ``WebhookError`` if it does not verify."""
    if not verify_webhook(secret, signature, body, tolerance_s=tolerance_s):
        raise WebhookError("the webhook's signature does not verify")
    data: dict[str, Any] = orjson.loads(body)
    return Job.from_dict(data) if data.get("object") == "job" else Prediction.from_dict(data)
