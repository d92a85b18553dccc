"""Queries on jobs and their chunks. Each state change is one conditional statement.

Lock order is always job row before chunk rows where a transaction takes both (cancel, claim),
or a running chunk before its job (finish), which never waits on a queued chunk: no deadlocks.
A chunk's counters reach its job only through the ``running -> done`` transition of the claim
that ran it, so a chunk finished twice (a slow worker and the one that took over) counts once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, func, insert, or_, select, true, tuple_, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.jobs import LIVE_JOB_STATUSES, ChunkStatus, Job, JobChunk, JobStatus

QUEUED, RUNNING, DONE = ChunkStatus.queued.value, ChunkStatus.running.value, ChunkStatus.done.value


@dataclass(slots=True)
class Claim:
    """A chunk this worker now owns (until ``lease_expires_at``), with what it needs to run it."""

    job_id: str
    seq: int
    attempt: int
    start_index: int
    n_lines: int
    lines: bytes
    model: str
    model_version: str
    input_format: str
    columns: list[str] | None
    probe: bytes | None = None
    """What isolated runs of the chunk found so far (``app.jobs.isolation``), if any."""


@dataclass(slots=True)
class ChunkResult:
    """A chunk's result lines and counts, as the worker writes them."""

    results: bytes
    succeeded: int
    failed: int


def _visible() -> Any:
    """Not expired: live, or final and not yet past ``expires_at`` (``app.retention``)."""
    return or_(Job.status.in_(LIVE_JOB_STATUSES), Job.expires_at > utcnow())


def get_job(*, session: Session, tenant: str, job_id: str, lock: bool = False) -> Job | None:
    """The tenant's job, or None (another tenant's, or an expired one, is None too)."""
    stmt = select(Job).where(Job.id == job_id, Job.tenant == tenant, _visible())
    if lock:
        stmt = stmt.with_for_update()
    return session.scalars(stmt).first()


def list_jobs(
    *, session: Session, tenant: str, limit: int, schedule_id: str | None = None
) -> list[Job]:
    """The tenant's newest jobs first (of one schedule, if given), expired ones left out."""
    stmt = select(Job).where(Job.tenant == tenant, _visible())
    if schedule_id is not None:
        stmt = stmt.where(Job.schedule_id == schedule_id)
    return list(session.scalars(stmt.order_by(Job.created_at.desc()).limit(limit)).all())


def insert_chunks(*, session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Store chunks in one multi-row statement."""
    if rows:
        session.execute(insert(JobChunk), list(rows))


def mark_published(
    *, session: Session, job_id: str, seqs: Sequence[int], when: datetime | None
) -> None:
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.seq.in_(list(seqs)))
        .values(published_at=when)
    )


def seal(
    *, session: Session, job_id: str, total: int, chunks: int, provenance: dict[str, Any]
) -> Job:
    """Record that every chunk is stored; the job may end from now on."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            sealed=True,
            total=total,
            chunks_total=chunks,
            provenance=provenance,
            updated_at=utcnow(),
        )
    )
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


ClaimKind = Literal["any", "fresh", "lost"]
"""Which chunks a claim takes: any runnable one, one never run, or one whose run was lost."""


def claim_chunk(
    *, session: Session, job_id: str, seq: int | None, lease: timedelta, kind: ClaimKind = "any"
) -> Claim | None:
    """Own chunk ``seq`` (or, with None, the job's first queued chunk never run) if it is queued
    or its lease ran out, and is of ``kind``; None when there is none to own."""
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(status=JobStatus.running.value, started_at=now, updated_at=now)
    )
    runnable = or_(
        JobChunk.status == QUEUED,
        and_(JobChunk.status == RUNNING, JobChunk.lease_expires_at < now),
    )
    if seq is None:
        seq_of = (
            select(JobChunk.seq)
            .where(JobChunk.job_id == job_id, JobChunk.status == QUEUED, JobChunk.attempts == 0)
            .order_by(JobChunk.seq)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        which = and_(JobChunk.seq == seq_of, JobChunk.status == QUEUED)
    else:
        which = and_(JobChunk.seq == seq, runnable, _of_kind(kind))
    row = session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, which)
        .values(status=RUNNING, attempts=JobChunk.attempts + 1, lease_expires_at=now + lease)
        .returning(
            JobChunk.seq,
            JobChunk.attempts,
            JobChunk.start_index,
            JobChunk.n_lines,
            JobChunk.lines,
            JobChunk.results,
        )
    ).first()
    if row is None:
        return None
    job = session.execute(
        select(Job.model, Job.model_version, Job.input_format, Job.columns).where(Job.id == job_id)
    ).first()
    if job is None:  # pragma: no cover - the chunk row would be gone with its job
        return None
    probe = None if row[5] is None else bytes(row[5])
    model, version, fmt, columns = job
    return Claim(
        job_id, row[0], row[1], row[2], row[3], bytes(row[4]), model, version, fmt, columns, probe
    )


def is_lost(*, session: Session, job_id: str, seq: int) -> bool:
    """Whether chunk ``seq`` ran before and may be claimed again (a ``kind="lost"`` claim)."""
    now = utcnow()
    runnable = or_(
        JobChunk.status == QUEUED,
        and_(JobChunk.status == RUNNING, JobChunk.lease_expires_at < now),
    )
    found = session.execute(
        select(JobChunk.seq).where(
            JobChunk.job_id == job_id, JobChunk.seq == seq, JobChunk.attempts > 0, runnable
        )
    ).first()
    return found is not None


def _of_kind(kind: ClaimKind) -> Any:
    if kind == "fresh":
        return JobChunk.attempts == 0
    if kind == "lost":
        return JobChunk.attempts > 0
    return true()


def extend_lease(
    *, session: Session, job_id: str, seq: int, attempt: int, lease: timedelta
) -> bool:
    """Push the lease of a chunk we still own further out; False when we lost it."""
    res = session.execute(
        update(JobChunk)
        .where(
            JobChunk.job_id == job_id,
            JobChunk.seq == seq,
            JobChunk.status == RUNNING,
            JobChunk.attempts == attempt,
        )
        .values(lease_expires_at=utcnow() + lease)
        .returning(JobChunk.seq)
    )
    return res.first() is not None


def save_probe(*, session: Session, claim: Claim, probe: bytes, lease: timedelta) -> bool:
    """Store what an isolated run of a chunk we still own found so far, and push its lease
    out; False when we lost it. Kept in ``results`` until the chunk is done."""
    res = session.execute(
        update(JobChunk)
        .where(
            JobChunk.job_id == claim.job_id,
            JobChunk.seq == claim.seq,
            JobChunk.status == RUNNING,
            JobChunk.attempts == claim.attempt,
        )
        .values(results=probe, lease_expires_at=utcnow() + lease)
        .returning(JobChunk.seq)
    )
    return res.first() is not None


def finish_chunk(*, session: Session, claim: Claim, result: ChunkResult) -> Job | None:
    """Store a chunk's results and add its counts to the job, once.

    Returns the job when this write was the chunk's ``running -> done`` transition (None when
    another attempt got there first or the chunk was taken away).
    """
    now = utcnow()
    done = session.execute(
        update(JobChunk)
        .where(
            JobChunk.job_id == claim.job_id,
            JobChunk.seq == claim.seq,
            JobChunk.status == RUNNING,
            JobChunk.attempts == claim.attempt,
        )
        .values(
            status=DONE,
            results=result.results,
            succeeded=result.succeeded,
            failed=result.failed,
            completed_at=now,
            lease_expires_at=None,
        )
        .returning(JobChunk.seq)
    ).first()
    if done is None:
        return None
    session.execute(
        update(Job)
        .where(Job.id == claim.job_id)
        .values(
            succeeded=Job.succeeded + result.succeeded,
            failed=Job.failed + result.failed,
            chunks_done=Job.chunks_done + 1,
            updated_at=now,
        )
    )
    return session.get(Job, claim.job_id, populate_existing=True)


def is_complete(job: Job) -> bool:
    """Every chunk of a sealed, still live job has run: time to end it."""
    return job.sealed and job.chunks_done >= job.chunks_total and job.status in LIVE_JOB_STATUSES


def cancel_chunks(*, session: Session, job_id: str) -> tuple[int, int]:
    """Cancel the chunks that have not started; returns (chunks, lines) cancelled."""
    rows = session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.status == QUEUED)
        .values(status=ChunkStatus.cancelled.value, completed_at=utcnow(), results=None)
        .returning(JobChunk.n_lines)
    ).all()
    return len(rows), sum(r[0] for r in rows)


def _stale_chunk(requeue_before: datetime) -> Any:
    old = or_(JobChunk.published_at.is_(None), JobChunk.published_at < requeue_before)
    return and_(JobChunk.status == QUEUED, old)


def stale_chunks(
    *, session: Session, now: datetime, requeue_before: datetime, limit: int = 1000
) -> list[tuple[str, int, str, datetime | None]]:
    """Chunks whose message may be lost: never published, published long ago and still queued,
    or running under a lease that ran out. The latter go back to ``queued``, unpublished.
    Returns (job id, seq, model, published at) of each; ``take_chunks`` marks them."""
    session.execute(
        update(JobChunk)
        .where(JobChunk.status == RUNNING, JobChunk.lease_expires_at < now)
        .values(status=QUEUED, published_at=None, lease_expires_at=None)
    )
    rows = session.execute(
        select(JobChunk.job_id, JobChunk.seq, Job.model, JobChunk.published_at)
        .join(Job, Job.id == JobChunk.job_id)
        .where(_stale_chunk(requeue_before))
        .order_by(JobChunk.job_id, JobChunk.seq)
        .limit(limit)
    ).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def take_chunks(
    *,
    session: Session,
    keys: Sequence[tuple[str, int]],
    now: datetime,
    requeue_before: datetime,
) -> list[tuple[str, int]]:
    """Mark chunks ``keys`` (job id, seq) published ``now`` if they are still stale; returns
    those this call took (a concurrent sweeper that took one first leaves it out here)."""
    if not keys:
        return []
    rows = session.execute(
        update(JobChunk)
        .where(tuple_(JobChunk.job_id, JobChunk.seq).in_(list(keys)))
        .where(_stale_chunk(requeue_before))
        .values(published_at=now)
        .returning(JobChunk.job_id, JobChunk.seq)
        .execution_options(synchronize_session=False)
    ).all()
    return [(r[0], r[1]) for r in rows]


def abandoned_uploads(*, session: Session, before: datetime) -> list[str]:
    """Jobs never sealed and not written to since ``before``: their upload died half-way."""
    return list(
        session.scalars(
            select(Job.id).where(Job.sealed.is_(False), Job.updated_at < before).limit(100)
        ).all()
    )


def chunk_counts(*, session: Session, job_id: str) -> dict[str, int]:
    """How many chunks of a job are in each state (for diagnostics and tests)."""
    rows = session.execute(
        select(JobChunk.status, func.count())
        .where(JobChunk.job_id == job_id)
        .group_by(JobChunk.status)
    ).all()
    return {str(status): int(n) for status, n in rows}
