"""Moving a batch on: expired when its completion window passes with work left, cancelled,
finalized once its job is done (requests counted by outcome, output and error files recorded).

Every read of a batch calls ``advance`` under the batch's row lock, and so does the beat
sweeper's step (``sweep``) for batches nobody reads; whichever comes first does it, once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.batches import LIVE_BATCH_STATES, Batch, BatchState
from app.db.engine import session_scope
from app.db.jobs import ChunkStatus, Job, JobChunk, JobStatus
from app.errors import Conflict, NotFound
from app.jobs import results
from app.jobs import service as jobs
from app.openai_compat import batch_render, files
from app.openai_compat.wire import unix
from app.registry import Registry

log = logging.getLogger(__name__)


def advance(
    s: Session, sessions: sessionmaker[Session], registry: Registry, batch: Batch, now: datetime
) -> None:
    """Expire ``batch`` if its window passed with work left, finalize it once its job is done.
    The caller holds the batch's row (``FOR UPDATE``) or has just made it."""
    if BatchState(batch.status).is_final:
        return
    job = None if batch.job_id is None else s.get(Job, batch.job_id)
    job_final = job is None or JobStatus(job.status).is_final
    if batch.status == BatchState.in_progress and now >= batch.window_ends_at and not job_final:
        batch.status = BatchState.expiring.value
        batch.times = {**batch.times, "finalizing_at": unix(now)}
        stop(sessions, batch)
        job = None if batch.job_id is None else s.get(Job, batch.job_id, populate_existing=True)
        job_final = True
    if job_final and not _running(s, batch.job_id):
        _finalize(s, sessions, registry, batch, job, now)


def stop(sessions: sessionmaker[Session], batch: Batch) -> None:
    """Cancel what of the batch's job has not started (running chunks finish)."""
    if batch.job_id is None:
        return
    with contextlib.suppress(Conflict, NotFound):  # it ended meanwhile
        jobs.cancel_job(sessions=sessions, tenant=batch.tenant, job_id=batch.job_id)


def _running(s: Session, job_id: str | None) -> bool:
    if job_id is None:
        return False
    n = s.scalar(
        select(func.count())
        .select_from(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.status == ChunkStatus.running.value)
    )
    return bool(n)


FINAL_OF = {
    BatchState.in_progress.value: BatchState.completed,
    BatchState.cancelling.value: BatchState.cancelled,
    BatchState.expiring.value: BatchState.expired,
}


def _finalize(
    s: Session,
    sessions: sessionmaker[Session],
    registry: Registry,
    batch: Batch,
    job: Job | None,
    now: datetime,
) -> None:
    """Count the requests by outcome, record the output and error files, end the batch."""
    final = FINAL_OF[batch.status]
    if final == BatchState.completed and job is not None and job.error_code is not None:
        final = BatchState.failed
        batch.errors = {
            "object": "list",
            "data": [{"code": job.error_code, "message": job.error_message, "param": None}],
        }
    ok, failed = batch_render.tally(outcomes(sessions, registry, batch, final.value))
    batch.request_counts = {"total": batch.total, "completed": ok, "failed": failed}
    for which, n in (("output", ok), ("error", failed)):
        if n == 0:
            continue
        fid = files.new_file_id()
        files.add_rendered(
            session=s,
            file_id=fid,
            tenant=batch.tenant,
            batch_id=batch.id,
            filename=f"{batch.id}_{which}.jsonl",
            lines=n,
            expires_at=batch.expires_at,
        )
        if which == "output":
            batch.output_file_id = fid
        else:
            batch.error_file_id = fid
    batch.status = final.value
    batch.times = {"finalizing_at": unix(now), **batch.times, f"{final.value}_at": unix(now)}
    log.info("batch ended", extra={"batch": batch.id, "status": final.value, "ok": ok})


def outcomes(
    sessions: sessionmaker[Session], registry: Registry, batch: Batch, ended: str
) -> Iterator[batch_render.Outcome]:
    """What became of each request line, in input order (the job must have ended)."""
    plan = batch.plan.split(b"\n") if batch.plan else []
    if batch.job_id is None:
        lines: Iterator[bytes] = iter(())
    else:
        blocks = results.open_results(
            sessions=sessions,
            registry=registry,
            tenant=batch.tenant,
            job_id=batch.job_id,
            fmt="jsonl",
        )
        lines = (line for line in files.lines_of(blocks) if line)
    return batch_render.walk(plan, lines, ended=ended)


def lock(s: Session, tenant: str, batch_id: str, *, wait: bool = False) -> Batch | None:
    """The tenant's batch under its row lock; None when another holds it (unless ``wait``)."""
    stmt = select(Batch).where(Batch.id == batch_id, Batch.tenant == tenant)
    return s.scalars(stmt.with_for_update(skip_locked=not wait)).first()


def sweep(*, sessions: sessionmaker[Session], registry: Registry, limit: int = 100) -> int:
    """Move on the live batches that can move (window passed, job ended, cancel or expiry
    done); returns how many ended. Harmless twice: each runs under its row lock."""
    now = utcnow()
    live = Batch.status.in_(LIVE_BATCH_STATES)
    movable = or_(
        Batch.status != BatchState.in_progress.value,
        Batch.window_ends_at <= now,
        Batch.job_id.is_(None),
        Job.status.not_in([JobStatus.queued.value, JobStatus.running.value]),
    )
    with sessions() as s:
        rows = s.execute(
            select(Batch.id, Batch.tenant)
            .outerjoin(Job, Job.id == Batch.job_id)
            .where(live, movable)
            .order_by(Batch.window_ends_at)
            .limit(limit)
        ).all()
    ended = 0
    for batch_id, tenant in rows:
        try:
            with session_scope(sessions) as s:
                batch = lock(s, tenant, batch_id)
                if batch is not None:
                    advance(s, sessions, registry, batch, now)
                    ended += BatchState(batch.status).is_final
        except Exception:
            log.exception("batch sweep failed", extra={"batch": batch_id})
    return ended
