"""The signed inferq webhook: its outbox rows, its body, its signature.

A prediction with a ``callback_url`` gets its delivery row in the transaction that stores its
result (``write_hook``), a job in the one that ends it (``outbox.add_webhook``); the body is
loaded when it is sent (the subject as ``GET`` shows it), signed
``X-Inferq-Signature: t=<unix>,v1=<hex hmac-sha256 of "<t>.<body>">``, and every attempt carries
the same ``X-Inferq-Delivery`` id, so a receiver can drop a repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from sqlalchemy.orm import Session

from app.db.deliveries import DeadReason, Delivery
from app.db.models import Prediction
from app.delivery import outbox
from app.delivery.dispatcher import Built, Dead, RetryPolicy
from app.integrations.base import Outgoing, retry_after_header
from app.predictions.views import prediction_public
from app.settings import Settings

SIGNATURE_HEADER = "X-Inferq-Signature"
DELIVERY_HEADER = "X-Inferq-Delivery"

BodyLoader = Callable[[Session, str], dict[str, object] | None]
BODY_LOADERS: dict[str, BodyLoader] = {}
"""``subject_type`` -> the body of a subject by id (jobs register theirs)."""


def _prediction_body(session: Session, subject_id: str) -> dict[str, object] | None:
    p = session.get(Prediction, subject_id)
    return None if p is None else prediction_public(p)


BODY_LOADERS["prediction"] = _prediction_body


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """``t=<unix>,v1=<hex hmac-sha256 of "<t>.<body>">``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0) -> bool:
    """Check a signature header as a receiver should: right key, fresh timestamp."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, t), header)


def write_hook(session: Session, written: Sequence[Any]) -> None:
    """Executor write hook: one delivery per finished prediction that has a ``callback_url``."""
    rows = [
        {
            "tenant": w.tenant,
            "subject_type": "prediction",
            "subject_id": w.id,
            "url": w.callback_url,
            "traceparent": getattr(w, "traceparent", None),
        }
        for w in written
        if w.callback_url
    ]
    if rows:
        outbox.stash(outbox.add(session=session, kind="webhook", rows=rows))


class WebhookChannel:
    """Builds the signed ``POST callback_url``; any non-2xx answer is retried."""

    kind = "webhook"

    def __init__(self, settings: Settings) -> None:
        self.secret = settings.webhook_secret
        self.policy = RetryPolicy(
            max_attempts=settings.webhook_max_attempts,
            base_s=settings.webhook_backoff_base_seconds,
            cap_s=300.0,
            timeout_s=settings.webhook_timeout_seconds,
            retry_client_errors=True,
        )

    def build(self, session: Session, delivery: Delivery) -> Built | Dead:
        loader = BODY_LOADERS.get(delivery.subject_type or "")
        subject = None if loader is None else loader(session, delivery.subject_id or "")
        if subject is None or not delivery.url:
            return Dead(DeadReason.GONE, f"{delivery.subject_type} {delivery.subject_id} is gone")
        body = orjson.dumps(subject)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
            DELIVERY_HEADER: delivery.id,
            "User-Agent": "inferq-webhooks/1",
        }
        return Built(Outgoing("POST", delivery.url, headers, body), retry_after=retry_after_header)
