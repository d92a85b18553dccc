"""Tables and queries of schedules: the schedules, their runs, and the files a watch has seen.

Claiming is done with ``SELECT … FOR UPDATE SKIP LOCKED`` so that any number of ticks (two
beats, several workers) share the work and never fire one schedule twice for one due time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, Session, aliased, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, new_id, utcnow
from app.db.jobs import LIVE_JOB_STATUSES, Job


class RunStatus(StrEnum):
    """Life of a schedule run. ``pending`` and ``running`` are live; the rest are final."""

    pending = "pending"
    """Waiting for a tick to claim it."""
    running = "running"
    """A tick is reading its source and creating its job."""
    submitted = "submitted"
    """Its job exists (``job_id``); the job's own status says how scoring goes."""
    skipped = "skipped"
    """Its source had nothing (new) to read, so no job was made."""
    failed = "failed"
    """Its source could not be read (``error``)."""


class Schedule(Base):
    """A recurring (cron) or file-triggered batch: which model scores which data where."""

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    cron: Mapped[str | None] = mapped_column(String(200), nullable=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    model: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str | None] = mapped_column(String(50), nullable=True)
    source: Mapped[Any] = mapped_column(JSONType)
    sink: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    watermark: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("tenant", "name", name="uq_schedules_tenant_name"),
        Index("ix_schedules_due", "enabled", "next_run_at"),
    )


class ScheduleRun(Base):
    """One firing of a schedule (cron, manual or a new file) and the job it made."""

    __tablename__ = "schedule_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    schedule_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("schedules.id", ondelete="CASCADE")
    )
    tenant: Mapped[str] = mapped_column(String(100))
    trigger: Mapped[str] = mapped_column(String(16))  # cron | manual | file
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.pending.value)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    file_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    provenance: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    sink_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """None (no sink), ``waiting`` (job not final), ``pending``, ``written`` or ``failed``."""
    sink_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sink_written_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_schedule_runs_schedule", "schedule_id", "created_at"),
        Index("ix_schedule_runs_status", "status", "created_at"),
        Index("ix_schedule_runs_job", "job_id"),
        Index("ix_schedule_runs_sink", "sink_status"),
    )


class WatchedFile(Base):
    """A file a watching schedule has taken in; the unique key makes that happen once."""

    __tablename__ = "watched_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("schedules.id", ondelete="CASCADE")
    )
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(40))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("schedule_id", "path", "sha256", name="uq_watched_files_content"),
        Index("ix_watched_files_stat", "schedule_id", "path", "size", "mtime_ns"),
    )


# --- schedules ---------------------------------------------------------------------------


def get_schedule(*, session: Session, tenant: str, schedule_id: str) -> Schedule | None:
    """The tenant's schedule, or None (another tenant's is None too)."""
    return session.scalars(
        select(Schedule).where(Schedule.id == schedule_id, Schedule.tenant == tenant)
    ).first()


def list_schedules(*, session: Session, tenant: str) -> list[Schedule]:
    return list(
        session.scalars(
            select(Schedule).where(Schedule.tenant == tenant).order_by(Schedule.created_at)
        ).all()
    )


def name_taken(*, session: Session, tenant: str, name: str, other_than: str | None) -> bool:
    q = select(Schedule.id).where(Schedule.tenant == tenant, Schedule.name == name)
    if other_than is not None:
        q = q.where(Schedule.id != other_than)
    return session.execute(q).first() is not None


def watching(*, session: Session) -> list[Schedule]:
    """Enabled schedules whose file source watches for new files."""
    rows = session.scalars(select(Schedule).where(Schedule.enabled.is_(True))).all()
    return [s for s in rows if isinstance(s.source, dict) and s.source.get("watch")]


def claim_due(*, session: Session, now: datetime, limit: int = 50) -> list[Schedule]:
    """Enabled schedules due at ``now``, locked for this transaction (others skip them)."""
    return list(
        session.scalars(
            select(Schedule)
            .where(Schedule.enabled.is_(True), Schedule.next_run_at <= now)
            .order_by(Schedule.next_run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
    )


# --- runs ----------------------------------------------------------------------------------


def add_run(
    *,
    session: Session,
    schedule: Schedule,
    trigger: str,
    scheduled_for: datetime | None = None,
    file_path: str | None = None,
    run_id: str | None = None,
) -> ScheduleRun:
    run = ScheduleRun(
        id=run_id or new_id("run"),
        schedule_id=schedule.id,
        tenant=schedule.tenant,
        trigger=trigger,
        status=RunStatus.pending.value,
        scheduled_for=scheduled_for,
        file_path=file_path,
        attempts=0,
        created_at=utcnow(),
    )
    session.add(run)
    session.flush()
    return run


def get_run(*, session: Session, tenant: str, schedule_id: str, run_id: str) -> ScheduleRun | None:
    return session.scalars(
        select(ScheduleRun).where(
            ScheduleRun.id == run_id,
            ScheduleRun.schedule_id == schedule_id,
            ScheduleRun.tenant == tenant,
        )
    ).first()


def list_runs(*, session: Session, schedule_id: str, limit: int) -> list[ScheduleRun]:
    return list(
        session.scalars(
            select(ScheduleRun)
            .where(ScheduleRun.schedule_id == schedule_id)
            .order_by(ScheduleRun.created_at.desc(), ScheduleRun.id.desc())
            .limit(limit)
        ).all()
    )


CLAIM_LOCK = 0x1F_5C_4E_D0
"""Postgres advisory lock key that makes run claims take turns (they are tiny)."""


def claim_run(*, session: Session, now: datetime) -> ScheduleRun | None:
    """The oldest pending run of a schedule that has no run going, marked running.

    One run per schedule at a time: two runs of a SQL source must not read from the same
    watermark. Claims take turns on an advisory lock so that each sees the one before it.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLAIM_LOCK})
    other = aliased(ScheduleRun)
    busy = select(other.schedule_id).where(other.status == RunStatus.running.value)
    run = session.scalars(
        select(ScheduleRun)
        .where(
            ScheduleRun.status == RunStatus.pending.value,
            ScheduleRun.schedule_id.not_in(busy),
        )
        .order_by(ScheduleRun.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if run is not None:
        run.status = RunStatus.running.value
        run.claimed_at = now
        run.attempts += 1
    return run


def requeue_stale_runs(
    *, session: Session, now: datetime, stale_after: timedelta, max_attempts: int
) -> int:
    """Runs whose tick died before making a job go back to pending (or fail after retries)."""
    before = now - stale_after
    base = update(ScheduleRun).where(
        ScheduleRun.status == RunStatus.running.value,
        ScheduleRun.job_id.is_(None),
        ScheduleRun.claimed_at < before,
    )
    failed = session.execute(
        base.where(ScheduleRun.attempts >= max_attempts).values(
            status=RunStatus.failed.value,
            error="the run was interrupted too many times",
            completed_at=now,
        )
    )
    again = session.execute(
        base.where(ScheduleRun.attempts < max_attempts).values(status=RunStatus.pending.value)
    )
    return int(getattr(failed, "rowcount", 0) or 0) + int(getattr(again, "rowcount", 0) or 0)


def finish_run(*, session: Session, run_id: str, **values: Any) -> None:
    session.execute(update(ScheduleRun).where(ScheduleRun.id == run_id).values(**values))


def runs_for_job(*, session: Session, job_id: str) -> list[ScheduleRun]:
    return list(session.scalars(select(ScheduleRun).where(ScheduleRun.job_id == job_id)).all())


def promote_waiting_sinks(*, session: Session) -> None:
    """Runs whose job has ended may now write their sink."""
    ended = select(Job.id).where(Job.status.not_in(LIVE_JOB_STATUSES))
    session.execute(
        update(ScheduleRun)
        .where(ScheduleRun.sink_status == "waiting", ScheduleRun.job_id.in_(ended))
        .values(sink_status="pending")
    )


def claim_sink(*, session: Session) -> ScheduleRun | None:
    """A run whose job is final and whose sink is still to be written, locked."""
    return session.scalars(
        select(ScheduleRun)
        .where(ScheduleRun.sink_status == "pending")
        .order_by(ScheduleRun.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()


# --- watched files -------------------------------------------------------------------------


def known_stats(
    *, session: Session, schedule_id: str, paths: list[str]
) -> set[tuple[str, int, int]]:
    """(path, size, mtime_ns) of the files among ``paths`` already taken in: not hashed again."""
    rows = session.execute(
        select(WatchedFile.path, WatchedFile.size, WatchedFile.mtime_ns).where(
            WatchedFile.schedule_id == schedule_id, WatchedFile.path.in_(paths)
        )
    ).all()
    return {(r[0], int(r[1]), int(r[2])) for r in rows}


def record_file(
    *,
    session: Session,
    schedule_id: str,
    path: str,
    size: int,
    mtime_ns: int,
    sha256: str,
    run_id: str,
) -> bool:
    """Record a file; True if it is new (no row with this path and content yet).

    The same content seen again under a new mtime only updates the stat, so it is not hashed
    on every tick.
    """
    existing = session.scalars(
        select(WatchedFile).where(
            WatchedFile.schedule_id == schedule_id,
            WatchedFile.path == path,
            WatchedFile.sha256 == sha256,
        )
    ).first()
    if existing is not None:
        existing.size, existing.mtime_ns = size, mtime_ns
        return False
    values = {
        "schedule_id": schedule_id,
        "path": path,
        "size": size,
        "mtime_ns": mtime_ns,
        "sha256": sha256,
        "run_id": run_id,
        "seen_at": utcnow(),
    }
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        stmt = postgresql.insert(WatchedFile).values(**values).on_conflict_do_nothing()
    else:  # SQLite, the embedded default
        from sqlalchemy.dialects import sqlite

        stmt = sqlite.insert(WatchedFile).values(**values).on_conflict_do_nothing()  # type: ignore[assignment]
    return session.execute(stmt.returning(WatchedFile.id)).first() is not None
