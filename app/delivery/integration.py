"""Integration write-backs as deliveries: Telegram ``sendMessage``, a ticket update, a template.

The outbox row holds the reply without any secret (a Bot API method name, an API path, a
rendered URL); the channel opens the integration's secrets when the request is built and the
connector of its kind adds the credentials. Network errors, 5xx, 408, 409, 425 and 429 are
retried (a 429's ``retry_after`` wins over the backoff); other 4xx answers are final.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db import integrations as crud
from app.db.deliveries import DeadReason, Delivery
from app.delivery.dispatcher import Built, Dead, RetryPolicy
from app.errors import InferqError
from app.integrations.base import Connector, Reply
from app.integrations.config import IntegrationSettings
from app.integrations.outbox import connectors
from app.integrations.secrets import SecretBox, install_log_redaction, redact
from app.integrations.store import opened


class IntegrationChannel:
    """Builds an integration's write-back with its credentials."""

    kind = "integration"

    def __init__(self, isettings: IntegrationSettings, box: SecretBox) -> None:
        self.box = box
        self.connectors: dict[str, Connector] = connectors(isettings.telegram_api_base)
        self.policy = RetryPolicy(
            max_attempts=isettings.integration_max_attempts,
            base_s=isettings.integration_backoff_base_seconds,
            cap_s=isettings.integration_backoff_max_seconds,
            timeout_s=isettings.integration_timeout_seconds,
        )
        install_log_redaction()

    def build(self, session: Session, delivery: Delivery) -> Built | Dead:
        row = crud.get_integration(session=session, integration_id=delivery.integration_id or "")
        if row is None or not row.enabled:
            return Dead(DeadReason.GONE, "the integration is disabled or deleted")
        try:
            integ = opened(row, self.box)
        except InferqError as exc:
            return Dead(DeadReason.UNBUILDABLE, exc.message)
        connector = self.connectors[integ.kind]
        secrets = list(integ.secrets.values())
        reply = Reply(
            delivery.action or "", delivery.method or "POST", delivery.target or "", delivery.body
        )
        try:
            request = connector.request(integ.config, integ.secrets, reply)
        except Exception as exc:  # a bad template, say: trying again will not help
            return Dead(DeadReason.UNBUILDABLE, redact(f"{type(exc).__name__}: {exc}", secrets))
        return Built(request, secrets, connector.retry_after)
