"""The outbox of every outbound request: signed webhooks and integration write-backs alike.

A *delivery* is one request to send (a row written in the same transaction as what it reports,
so it is never lost); every try at it is an *attempt*. ``kind`` says which channel builds the
request: ``webhook`` (the signed inferq webhook of a prediction or a job) or ``integration``
(a Telegram ``sendMessage``, a ticket update, a generic template). A delivery ends
``delivered`` or ``dead`` with a ``dead_reason``; a dead one can be replayed.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, utcnow


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    """Given up: ``dead_reason`` says why; ``replay`` sends it again."""


class DeadReason(StrEnum):
    EGRESS_DENIED = "egress_denied"
    """The URL, or the address it resolved to, is not allowed by the egress policy."""
    MAX_ATTEMPTS = "max_attempts"
    """Every allowed attempt failed with a retryable error."""
    REJECTED = "rejected"
    """The receiver answered with a final error (a 4xx other than 408/409/425/429)."""
    UNBUILDABLE = "unbuildable"
    """The request could not be built (a bad template, secrets that cannot be read)."""
    GONE = "gone"
    """What it reports, or the integration that sends it, no longer exists or is disabled."""


class Delivery(Base):
    """One outbound request to make (an outbox row)."""

    __tablename__ = "deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # webhook | integration
    tenant: Mapped[str] = mapped_column(String(100))
    # webhook: what it reports and where to
    subject_type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    subject_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    # integration: who sends it and what (never a secret: the channel adds credentials)
    integration_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("integrations.id", ondelete="CASCADE"), nullable=True, index=True
    )
    event_id: Mapped[str | None] = mapped_column(
        String(40),
        ForeignKey("integration_events.id", ondelete="CASCADE"),
        nullable=True,
        index=True,
    )
    action: Mapped[str | None] = mapped_column(String(32), nullable=True)
    method: Mapped[str | None] = mapped_column(String(8), nullable=True)
    target: Mapped[str | None] = mapped_column(Text, nullable=True)
    body: Mapped[Any] = mapped_column(JSONType, nullable=True)
    # the state machine
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    replay_base: Mapped[int] = mapped_column(Integer, default=0)
    """``attempt_count`` when last replayed: attempts since then count against the limit."""
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    dead_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    """When it and its attempts are deleted: set when it becomes final (delivered or dead) to
    then plus the tenant's retention; None while pending (a replay clears it)."""
    traceparent: Mapped[str | None] = mapped_column(String(55), nullable=True)
    """The W3C trace context of what it reports (``app.tracing``): sent as ``traceparent``."""

    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_tenant_status", "tenant", "status"),
    )


class DeliveryAttempt(Base):
    """One try at a delivery: what came back (errors stored with secrets redacted)."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    retry_after_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), default="failed")
    """``delivered``, ``retry`` (another attempt is planned) or ``dead``."""
