"""Tables and queries of the event hooks: integrations, inbound events, outbound deliveries.

An *integration* is one Telegram bot or one help desk of one tenant; its secrets are stored as
one Fernet token and never leave the core in clear. An *event* is one inbound update or ticket,
unique per integration by its external id (Telegram ``update_id``, the ticket id), which is how
a retried webhook is processed once. The calls back to the other side are deliveries of kind
``integration`` in the one outbox (``app.db.deliveries``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, default_expiry, utcnow
from app.db.deliveries import Delivery, DeliveryAttempt


class Integration(Base):
    """A tenant's bot or help desk: what it is, how to reach it, which model answers."""

    __tablename__ = "integrations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # telegram | zendesk | generic
    name: Mapped[str] = mapped_column(String(100))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    config: Mapped[Any] = mapped_column(JSONType)
    secrets: Mapped[str] = mapped_column(Text)  # a Fernet token of a JSON object
    secret_names: Mapped[Any] = mapped_column(JSONType)
    source: Mapped[str] = mapped_column(String(16), default="api")  # api | settings
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_integrations_tenant_name"),)


class IntegrationEvent(Base):
    """One inbound update or ticket, and what became of it."""

    __tablename__ = "integration_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    integration_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("integrations.id", ondelete="CASCADE")
    )
    tenant: Mapped[str] = mapped_column(String(100))
    external_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))  # message | command | unsupported | ticket …
    status: Mapped[str] = mapped_column(String(16))  # queued | done | replied | ignored | failed
    data: Mapped[Any] = mapped_column(JSONType)
    prediction_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, default=default_expiry, index=True)
    """When it is deleted, once it is no longer queued and no delivery answers it any more."""

    __table_args__ = (
        UniqueConstraint("integration_id", "external_id", name="uq_integration_events_external"),
        Index("ix_integration_events_recent", "integration_id", "created_at"),
    )


def _insert_for(session: Session) -> Any:
    """The dialect's ``INSERT`` that knows ``ON CONFLICT`` (Postgres and SQLite do)."""
    name = session.get_bind().dialect.name
    return postgresql.insert if name == "postgresql" else sqlite.insert


# --- integrations ---------------------------------------------------------------------------


def get_integration(*, session: Session, integration_id: str) -> Integration | None:
    """Any tenant's integration by id (the hooks know no tenant; their secret decides)."""
    return session.get(Integration, integration_id)


def get_for_tenant(*, session: Session, tenant: str, integration_id: str) -> Integration | None:
    """The tenant's integration, or None (another tenant's is None too)."""
    return session.scalars(
        select(Integration).where(Integration.id == integration_id, Integration.tenant == tenant)
    ).first()


def list_for_tenant(*, session: Session, tenant: str) -> list[Integration]:
    return list(
        session.scalars(
            select(Integration).where(Integration.tenant == tenant).order_by(Integration.created_at)
        ).all()
    )


def list_all(*, session: Session) -> list[Integration]:
    return list(session.scalars(select(Integration).order_by(Integration.created_at)).all())


def upsert_from_settings(*, session: Session, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Insert or refresh settings-configured integrations; an API-made one of the same id wins.

    Returns the ids that were written.
    """
    written: list[str] = []
    ins = _insert_for(session)
    for row in rows:
        stmt = ins(Integration).values(**row, source="settings")
        stmt = stmt.on_conflict_do_update(
            index_elements=[Integration.id],
            set_={k: stmt.excluded[k] for k in row if k not in ("id", "created_at")},
            where=Integration.source == "settings",
        ).returning(Integration.id)
        got = session.execute(stmt).first()
        if got is not None:
            written.append(got[0])
    return written


# --- events -------------------------------------------------------------------------------


def insert_event(*, session: Session, row: dict[str, Any]) -> bool:
    """Insert an inbound event unless its external id was seen; True when it is new."""
    stmt = (
        _insert_for(session)(IntegrationEvent)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["integration_id", "external_id"])
        .returning(IntegrationEvent.id)
    )
    return session.execute(stmt).first() is not None


def count_events(*, session: Session, integration_id: str | None = None) -> int:
    stmt = select(func.count()).select_from(IntegrationEvent)
    if integration_id is not None:
        stmt = stmt.where(IntegrationEvent.integration_id == integration_id)
    return int(session.execute(stmt).scalar_one())


# --- deliveries ---------------------------------------------------------------------------


def delete_integration(*, session: Session, integration: Integration) -> None:
    """Delete an integration with its events, deliveries and attempts (SQLite has no cascade)."""
    iid = integration.id
    deliveries = select(Delivery.id).where(Delivery.integration_id == iid)
    session.execute(delete(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(deliveries)))
    session.execute(delete(Delivery).where(Delivery.integration_id == iid))
    session.execute(delete(IntegrationEvent).where(IntegrationEvent.integration_id == iid))
    session.execute(delete(Integration).where(Integration.id == iid))


# --- activity -----------------------------------------------------------------------------


def counts_by_status(
    *, session: Session, table: type[IntegrationEvent] | type[Delivery], ids: list[str]
) -> dict[str, dict[str, int]]:
    """``{integration_id: {status: count}}`` of events or deliveries."""
    out: dict[str, dict[str, int]] = {i: {} for i in ids}
    rows = session.execute(
        select(table.integration_id, table.status, func.count())
        .where(table.integration_id.in_(ids))
        .group_by(table.integration_id, table.status)
    )
    for iid, status, n in rows:
        out[str(iid)][status] = int(n)
    return out


def recent_events(
    *, session: Session, ids: list[str], per_integration: int
) -> dict[str, list[IntegrationEvent]]:
    """The newest events of each integration (one query, a window function)."""
    ranked = select(
        IntegrationEvent.id,
        func.row_number()
        .over(
            partition_by=IntegrationEvent.integration_id,
            order_by=IntegrationEvent.created_at.desc(),
        )
        .label("rn"),
    ).where(IntegrationEvent.integration_id.in_(ids))
    sub = ranked.subquery()
    rows = session.scalars(
        select(IntegrationEvent)
        .join(sub, sub.c.id == IntegrationEvent.id)
        .where(sub.c.rn <= per_integration)
        .order_by(IntegrationEvent.created_at.desc())
    ).all()
    out: dict[str, list[IntegrationEvent]] = {i: [] for i in ids}
    for e in rows:
        out[e.integration_id].append(e)
    return out


def deliveries_of(*, session: Session, event_ids: list[str]) -> dict[str, list[Delivery]]:
    out: dict[str, list[Delivery]] = {}
    if event_ids:
        rows = session.scalars(
            select(Delivery).where(Delivery.event_id.in_(event_ids)).order_by(Delivery.created_at)
        ).all()
        for d in rows:
            out.setdefault(d.event_id or "", []).append(d)
    return out


def attempts_of(*, session: Session, delivery_ids: list[str]) -> dict[str, list[DeliveryAttempt]]:
    out: dict[str, list[DeliveryAttempt]] = {}
    if delivery_ids:
        rows = session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id.in_(delivery_ids))
            .order_by(DeliveryAttempt.id)
        ).all()
        for a in rows:
            out.setdefault(a.delivery_id, []).append(a)
    return out
