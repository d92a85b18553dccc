"""The table of OpenAI-style batches: one bulk job plus what the Batch API says about it.

A batch's work is an ordinary job (``job_id``): one job line per input text. What the job does
not know lives here: the input file, the endpoint, the completion window, and the *plan*, one
JSON line per input line of the file (its ``custom_id``, how many texts it holds and their token
count, or why it was refused), from which the output and error files are rendered in input
order (``app.openai_compat.batch_render``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, LargeBinary, String
from sqlalchemy.orm import Mapped, deferred, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, default_expiry, utcnow


class BatchState(StrEnum):
    """What is stored of a batch's life; the public status also reads its job (see
    ``app.openai_compat.batches.public_status``). ``expiring`` and ``cancelling`` wait for the
    job's running chunks to finish before the batch is finalized."""

    in_progress = "in_progress"
    cancelling = "cancelling"
    expiring = "expiring"
    completed = "completed"
    failed = "failed"
    expired = "expired"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (
            BatchState.completed,
            BatchState.failed,
            BatchState.expired,
            BatchState.cancelled,
        )


LIVE_BATCH_STATES = (
    BatchState.in_progress.value,
    BatchState.cancelling.value,
    BatchState.expiring.value,
)


class Batch(Base):
    """One ``POST /v1/batches``."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=BatchState.in_progress.value)
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    """None when no line of the input file was valid (nothing to run)."""
    input_file_id: Mapped[str] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(100), nullable=True)
    metadata_: Mapped[Any | None] = mapped_column("metadata", JSONType, nullable=True)
    plan: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    """One JSON array per input line: ``[custom_id, texts, tokens, base64, error]``."""
    total: Mapped[int] = mapped_column(default=0)
    """Input lines."""
    texts: Mapped[int] = mapped_column(default=0)
    """Job lines: the texts of the valid input lines."""
    refused: Mapped[int] = mapped_column(default=0)
    """Input lines refused before anything ran (each fails alone in the error file)."""
    request_counts: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    """``{"total", "completed", "failed"}`` once finalized (exact, by input line)."""
    errors: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    times: Mapped[Any] = mapped_column(JSONType, default=dict)
    """Unix seconds of each step: ``in_progress_at``, ``finalizing_at``, ``completed_at``, …"""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    window_ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    """``created_at`` plus the completion window: what has not run by then ends expired."""
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, default=default_expiry, index=True)
    """When it is deleted, once final (``app.retention``): its job's expiry."""

    __table_args__ = (
        Index("ix_batches_tenant_created", "tenant", "created_at"),
        Index("ix_batches_status_window", "status", "window_ends_at"),
    )
