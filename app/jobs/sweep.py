"""The jobs' part of the sweeper: chunks whose message was lost are published again, uploads
that died half-way are dropped."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.engine import session_scope
from app.db.jobs import Job, JobChunk
from app.jobs import store
from app.jobs.ingest import JobPublisher
from app.settings import Settings

log = logging.getLogger(__name__)

ABANDONED_UPLOAD_SECONDS = 1800.0
"""An unsealed job not written to for this long lost its uploader; it is dropped."""


@dataclass(slots=True)
class JobSweepReport:
    republished: int
    dropped: int


def sweep_jobs(
    *, sessions: sessionmaker[Session], publisher: JobPublisher, settings: Settings
) -> JobSweepReport:
    """Publish again chunks never published, queued too long, or whose worker's lease ran out
    (it died); drop uploads abandoned half-way. Harmless to run twice: claims are conditional."""
    now = utcnow()
    with session_scope(sessions) as s:
        stale = store.stale_chunks(
            session=s,
            now=now,
            requeue_before=now - timedelta(seconds=settings.requeue_after_seconds),
        )
        dropped = store.abandoned_uploads(
            session=s, before=now - timedelta(seconds=ABANDONED_UPLOAD_SECONDS)
        )
        if dropped:  # chunks first, then the job: the order workers lock them in
            s.execute(delete(JobChunk).where(JobChunk.job_id.in_(dropped)))
            s.execute(delete(Job).where(Job.id.in_(dropped)))
    failed: dict[str, list[int]] = {}
    for job_id, seq, model in stale:
        try:
            publisher.publish_job_chunk(model, job_id, seq)
        except Exception as exc:
            log.warning("sweeper publish failed", extra={"job": job_id, "error": repr(exc)})
            failed.setdefault(job_id, []).append(seq)
    if failed:
        with session_scope(sessions) as s:
            for job_id, seqs in failed.items():
                store.mark_published(session=s, job_id=job_id, seqs=seqs, when=None)
    if stale or dropped:
        log.info("job sweeper", extra={"republished": len(stale), "dropped_uploads": len(dropped)})
    return JobSweepReport(republished=len(stale), dropped=len(dropped))
