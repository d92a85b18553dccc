"""Tables and queries of the event hooks: integrations, inbound events, outbound deliveries.

An *integration* is one Telegram bot or one help desk of one tenant; its secrets are stored as
one Fernet token and never leave the core in clear. An *event* is one inbound update or ticket,
unique per integration by its external id (Telegram ``update_id``, the ticket id), which is how
a retried webhook is processed once. A *delivery* is one call back to the other side (an outbox
row), and every try at it is an *attempt*.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, new_id, utcnow


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

    __table_args__ = (
        UniqueConstraint("integration_id", "external_id", name="uq_integration_events_external"),
        Index("ix_integration_events_recent", "integration_id", "created_at"),
    )


class IntegrationDelivery(Base):
    """One call back to the other side (``sendMessage``, a ticket update): an outbox row."""

    __tablename__ = "integration_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    integration_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("integrations.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("integration_events.id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(8))
    target: Mapped[str] = mapped_column(Text)  # never holds a secret (see the connectors)
    body: Mapped[Any] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_integration_deliveries_due", "status", "next_attempt_at"),)


class IntegrationAttempt(Base):
    """One try at a delivery: what came back (errors are stored with secrets redacted)."""

    __tablename__ = "integration_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("integration_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    retry_after_s: Mapped[float | None] = mapped_column(Float, nullable=True)


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


def insert_deliveries(*, session: Session, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Add outbox rows (``id`` filled in when absent); returns their ids."""
    now = utcnow()
    full = [
        {
            "id": new_id("igd"),
            "status": "pending",
            "attempt_count": 0,
            "next_attempt_at": now,
            "created_at": now,
            **r,
        }
        for r in rows
    ]
    if full:
        session.execute(insert(IntegrationDelivery), full)
    return [r["id"] for r in full]


def delete_integration(*, session: Session, integration: Integration) -> None:
    """Delete an integration with its events, deliveries and attempts (SQLite has no cascade)."""
    iid = integration.id
    deliveries = select(IntegrationDelivery.id).where(IntegrationDelivery.integration_id == iid)
    session.execute(
        delete(IntegrationAttempt).where(IntegrationAttempt.delivery_id.in_(deliveries))
    )
    session.execute(delete(IntegrationDelivery).where(IntegrationDelivery.integration_id == iid))
    session.execute(delete(IntegrationEvent).where(IntegrationEvent.integration_id == iid))
    session.execute(delete(Integration).where(Integration.id == iid))


# --- activity -----------------------------------------------------------------------------


def counts_by_status(
    *, session: Session, table: type[IntegrationEvent] | type[IntegrationDelivery], ids: list[str]
) -> dict[str, dict[str, int]]:
    """``{integration_id: {status: count}}`` of events or deliveries."""
    out: dict[str, dict[str, int]] = {i: {} for i in ids}
    rows = session.execute(
        select(table.integration_id, table.status, func.count())
        .where(table.integration_id.in_(ids))
        .group_by(table.integration_id, table.status)
    )
    for iid, status, n in rows:
        out[iid][status] = int(n)
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


def deliveries_of(
    *, session: Session, event_ids: list[str]
) -> dict[str, list[IntegrationDelivery]]:
    out: dict[str, list[IntegrationDelivery]] = {}
    if event_ids:
        rows = session.scalars(
            select(IntegrationDelivery)
            .where(IntegrationDelivery.event_id.in_(event_ids))
            .order_by(IntegrationDelivery.created_at)
        ).all()
        for d in rows:
            out.setdefault(d.event_id, []).append(d)
    return out


def attempts_of(
    *, session: Session, delivery_ids: list[str]
) -> dict[str, list[IntegrationAttempt]]:
    out: dict[str, list[IntegrationAttempt]] = {}
    if delivery_ids:
        rows = session.scalars(
            select(IntegrationAttempt)
            .where(IntegrationAttempt.delivery_id.in_(delivery_ids))
            .order_by(IntegrationAttempt.id)
        ).all()
        for a in rows:
            out.setdefault(a.delivery_id, []).append(a)
    return out
