"""Tables of bulk jobs: a job, and its input split into chunks of raw lines.

A job of a million lines is a few hundred ``job_chunks`` rows, not a million prediction rows:
each chunk holds its raw input lines (JSONL or CSV records, as uploaded) and, once a worker has
run it, its result lines, both as one compressed blob. That keeps the upload one bulk insert per
few thousand lines and a chunk's results one ``UPDATE``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, deferred, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, default_expiry, utcnow


class JobStatus(StrEnum):
    """Life of a job. ``queued`` and ``running`` are live; the rest are final.

    A job that ran to its end is ``succeeded`` even when some lines failed (each line carries
    its own error); it is ``failed`` when no line succeeded.
    """

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        return self not in (JobStatus.queued, JobStatus.running)


class ChunkStatus(StrEnum):
    """Life of a chunk: ``queued`` -> ``running`` (under a lease) -> ``done``, or ``cancelled``."""

    queued = "queued"
    running = "running"
    done = "done"
    cancelled = "cancelled"


LIVE_JOB_STATUSES = (JobStatus.queued.value, JobStatus.running.value)


class Job(Base):
    """One bulk job: a model, a list of inputs (in chunks) and where its results go."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    input_format: Mapped[str] = mapped_column(String(8))  # how chunk lines parse: jsonl | csv
    columns: Mapped[Any | None] = mapped_column(JSONType, nullable=True)  # CSV header
    total: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    cancelled: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    sealed: Mapped[bool] = mapped_column(Boolean, default=False)
    """True once every chunk is stored; only a sealed job can end."""
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    schedule_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    provenance: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    sink: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, default=default_expiry, index=True)
    """When the job, its chunks and its results are deleted, once final (``app.retention``)."""

    __table_args__ = (Index("ix_jobs_tenant_created", "tenant", "created_at"),)


class JobChunk(Base):
    """A slice of a job's inputs, run by one worker as full model batches."""

    __tablename__ = "job_chunks"

    job_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    start_index: Mapped[int] = mapped_column(Integer)
    n_lines: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=ChunkStatus.queued.value)
    lines: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    """The chunk's input records, ``\\n``-separated, exactly as uploaded."""
    results: Mapped[bytes | None] = deferred(mapped_column(LargeBinary, nullable=True))
    """One JSON result line per input, ``\\n``-separated, in input order."""
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_job_chunks_live", "status", "published_at"),)
