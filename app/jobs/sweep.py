"""The jobs' part of the sweeper: chunks whose message was lost are published again, uploads
that died half-way are dropped."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from app.db import sweeps
from app.db.base import utcnow
from app.db.engine import session_scope
from app.db.jobs import Job, JobChunk
from app.jobs import store
from app.jobs.ingest import JobPublisher
from app.requeue import QueueView
from app.settings import Settings

log = logging.getLogger(__name__)

ABANDONED_UPLOAD_SECONDS = 1800.0
"""An unsealed job not written to for this long lost its uploader; it is dropped."""


@dataclass(slots=True)
class JobSweepReport:
    republished: int
    dropped: int


def sweep_jobs(
    *,
    sessions: sessionmaker[Session],
    publisher: JobPublisher,
    settings: Settings,
    lost_before: datetime | None = None,
) -> JobSweepReport:
    """Publish again chunks never published or whose worker's lease ran out (it died), and
    queued ones whose message may be lost (``app.requeue``: never a backlog twice); drop
    uploads abandoned half-way. Harmless to run twice: claims and marks are conditional.
    ``lost_before``: the broker lost its messages then; every chunk published before is
    published again now (``app.predictions.sweeper.sweep_predictions``)."""
    now = utcnow()
    requeue_before = now - timedelta(seconds=settings.requeue_after_seconds)
    if lost_before is not None:
        requeue_before = lost_before
    with session_scope(sessions) as s:
        stale = store.stale_chunks(session=s, now=now, requeue_before=requeue_before)
        dropped = store.abandoned_uploads(
            session=s, before=now - timedelta(seconds=ABANDONED_UPLOAD_SECONDS)
        )
        if dropped:  # chunks first, then the job: the order workers lock them in
            s.execute(delete(JobChunk).where(JobChunk.job_id.in_(dropped)))
            s.execute(delete(Job).where(Job.id.in_(dropped)))
    if lost_before is None:
        chosen = _choose(sessions, publisher, stale, now=now, settings=settings)
    else:
        chosen = {(job_id, seq): model for job_id, seq, model, _ in stale}
    with session_scope(sessions) as s:
        taken = store.take_chunks(
            session=s, keys=list(chosen), now=now, requeue_before=requeue_before
        )
    failed: dict[str, list[int]] = {}
    for job_id, seq in taken:
        try:
            publisher.publish_job_chunk(chosen[(job_id, seq)], job_id, seq)
        except Exception as exc:
            log.warning("sweeper publish failed", extra={"job": job_id, "error": repr(exc)})
            failed.setdefault(job_id, []).append(seq)
    if failed:
        with session_scope(sessions) as s:
            for job_id, seqs in failed.items():
                store.mark_published(session=s, job_id=job_id, seqs=seqs, when=None)
    if taken or dropped:
        log.info("job sweeper", extra={"republished": len(taken), "dropped_uploads": len(dropped)})
    return JobSweepReport(republished=len(taken), dropped=len(dropped))


def _choose(
    sessions: sessionmaker[Session],
    publisher: JobPublisher,
    stale: list[tuple[str, int, str, datetime | None]],
    *,
    now: datetime,
    settings: Settings,
) -> dict[tuple[str, int], str]:
    """(job id, seq) -> model of the stale chunks whose message may be lost."""
    requeue_after = timedelta(seconds=settings.requeue_after_seconds)
    views: dict[str, QueueView] = {}
    chosen = {}
    for job_id, seq, model, published_at in stale:
        if published_at is not None:
            view = views.get(model)
            if view is None:
                view = views[model] = QueueView.read(
                    publisher, model, partial(_front, sessions, model, now)
                )
            if not view.may_be_lost(published_at, requeue_after):
                continue
        chosen[(job_id, seq)] = model
    return chosen


def _front(sessions: sessionmaker[Session], model: str, now: datetime) -> datetime | None:
    """The queue's delivery front, from predictions: chunks run off the table (``run_chunks``)
    as well as by message, so theirs says nothing of the queue's order."""
    with sessions() as s:
        return sweeps.newest_held(session=s, model=model, now=now)
