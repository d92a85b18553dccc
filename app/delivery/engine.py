"""One dispatcher per process, with every channel: what workers and the API build at start-up."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from app.delivery.dispatcher import Channel, Dispatcher
from app.delivery.egress import Resolver, policy_for, system_resolver
from app.delivery.integration import IntegrationChannel
from app.delivery.webhook import WebhookChannel
from app.integrations.config import IntegrationSettings
from app.integrations.secrets import SecretBox
from app.retention import Kind, retention_s
from app.settings import Settings


def build_dispatcher(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    isettings: IntegrationSettings | None = None,
    box: SecretBox | None = None,
    resolver: Resolver | None = None,
) -> Dispatcher:
    """The dispatcher of signed webhooks and integration write-backs, under the egress policy."""
    isettings = isettings or IntegrationSettings()
    box = box or SecretBox.from_settings(settings, isettings)
    channels: list[Channel] = [WebhookChannel(settings), IntegrationChannel(isettings, box)]
    return Dispatcher(
        sessions,
        {c.kind: c for c in channels},
        policy_for(settings),
        threads=8 + isettings.integration_sender_threads,
        resolver=resolver or pinned_resolver(settings.egress_resolve),
        retention_s=lambda tenant: retention_s(settings, Kind.deliveries, tenant),
    )


def pinned_resolver(pinned: dict[str, str]) -> Resolver | None:
    """A resolver that answers the ``INFERQ_EGRESS_RESOLVE`` names itself (None: plain DNS)."""
    if not pinned:
        return None
    table = {k.lower().rstrip("."): v for k, v in pinned.items()}

    def resolve(host: str, port: int) -> list[str]:
        fixed = table.get(host.lower().rstrip("."))
        return [fixed] if fixed is not None else system_resolver(host, port)

    return resolve
