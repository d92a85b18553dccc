"""The end of a job: its final state, its webhook and the finished-job hooks, in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.jobs import Job, JobStatus
from app.db.predictions import notify_done
from app.delivery import outbox
from app.jobs import store

log = logging.getLogger(__name__)

JobHook = Callable[[Session, Job], None]
JOB_FINISHED_HOOKS: list[JobHook] = []
"""Called in the transaction that marks a job final (succeeded, failed or cancelled)."""


def end_job_if_complete(session: Session, job: Job) -> list[str]:
    """End ``job`` when its last chunk has run; returns the webhook deliveries to send."""
    if not store.is_complete(job):
        return []
    ok = job.succeeded > 0 or job.failed == 0
    return end_job(session, job, JobStatus.succeeded if ok else JobStatus.failed)


def end_job(session: Session, job: Job, status: JobStatus) -> list[str]:
    """Mark ``job`` final, queue its webhook and run the finished-job hooks, in ``session``."""
    now = utcnow()
    job.status = status.value
    job.completed_at = now
    job.updated_at = now
    session.flush()
    deliveries = []
    if job.callback_url:
        deliveries.append(
            outbox.add_webhook(
                session=session,
                tenant=job.tenant,
                subject_type="job",
                subject_id=job.id,
                url=job.callback_url,
            )
        )
    for hook in JOB_FINISHED_HOOKS:
        hook(session, job)
    notify_done(session=session, ids=[job.id])  # wakes ``GET /v1/jobs/{id}?wait=`` at commit
    log.info(
        "job ended",
        extra={
            "job": job.id,
            "status": job.status,
            "succeeded": job.succeeded,
            "failed": job.failed,
        },
    )
    return deliveries
