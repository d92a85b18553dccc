"""Tables of the core: predictions and webhook deliveries."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Float, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, default_expiry, utcnow


class Status(StrEnum):
    """Life of a prediction. ``queued`` and ``running`` are live; the rest are final."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    expired = "expired"

    @property
    def is_final(self) -> bool:
        return self not in (Status.queued, Status.running)


FINAL_STATUSES = tuple(s.value for s in Status if s.is_final)

PRIORITIES = {"high": 0, "normal": 1, "low": 2}


class Prediction(Base):
    """One input for one model, and what became of it."""

    __tablename__ = "predictions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    model: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(16), default=Status.queued.value)
    priority: Mapped[int] = mapped_column(Integer, default=1)
    input: Mapped[Any] = mapped_column(JSONType)
    output: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    metadata_: Mapped[Any | None] = mapped_column("metadata", JSONType, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(320), nullable=True)
    """The caller's key (at most 255 characters) and ``#<index of the input>``."""
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    job_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    custom_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    run_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, default=default_expiry, index=True)
    """When it is deleted, once final (``app.retention``): ``created_at`` plus its ``ttl_s`` or
    the tenant's retention."""
    traceparent: Mapped[str | None] = mapped_column(String(55), nullable=True)
    """The W3C trace context of the request that made it (``app.tracing``)."""

    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_predictions_tenant_idem"),
        Index("ix_predictions_live", "status", "published_at"),
        Index("ix_predictions_job", "job_id", "job_index"),
        # admission control counts what waits per tenant and per model (app/predictions/admission.py)
        Index(
            "ix_predictions_waiting_tenant",
            "tenant",
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
        Index(
            "ix_predictions_waiting_model",
            "model",
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
        # a claim takes the model's queued high-priority requests too (app/db/predictions.py)
        Index(
            "ix_predictions_high_queued",
            "model",
            "created_at",
            postgresql_where=text("status = 'queued' AND priority = 0"),
            sqlite_where=text("status = 'queued' AND priority = 0"),
        ),
    )


class BrokerEpoch(Base):
    """That the broker behind a queue prefix was given its epoch marker
    (``app.requeue.BrokerWatch``): from then on, a broker without the marker lost its messages;
    before, it is only new."""

    __tablename__ = "broker_epochs"

    prefix: Mapped[str] = mapped_column(String(120), primary_key=True)
    marked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AdmissionState(Base):
    """One admission bound's counter (``t:<tenant>`` or ``m:<model>``); see
    ``app.predictions.admission``."""

    __tablename__ = "admission_state"

    scope: Mapped[str] = mapped_column(String(120), primary_key=True)
    live: Mapped[float] = mapped_column(Float, default=0.0)
    """Inputs queued or running: recounted at ``counted_at``, raised by each admission since."""
    counted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    drain_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    """Inputs finished per second, as the recounts measured it (behind ``Retry-After``)."""
    tokens: Mapped[float] = mapped_column(Float, default=0.0)
    """The tenant's rate bucket at ``tokens_at``."""
    tokens_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
