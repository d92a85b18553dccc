"""The purge: delete what has expired, in short bounded batches, children first.

An object is purged once it is final and past its ``expires_at`` (``app.retention``); a queued
or running one never is, nor a pending delivery. Each batch is one ``DELETE … WHERE id IN
(SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`` in its own transaction: it locks only rows that
nobody else works on (and skips any that someone holds), so submissions, claims and result
writes go on undisturbed while it runs. Children go before their parents, so nothing relies on
a cascade (SQLite enforces none): a job's chunks before the job, a delivery's attempts before
the delivery, an event only once no delivery refers to it any more, and a file's parts before
the file.

Files and batches (the OpenAI-compatible API, ``app.openai_compat``) refer to each other by id,
without foreign keys: a batch names its ``input_file_id`` (an upload, which several batches may
share) and, once final, its ``output_file_id`` and ``error_file_id`` (rendered files, whose
``batch_id`` names the batch back and whose expiry is the batch's). A batch is purged once it is
final (not ``in_progress``, ``cancelling`` or ``expiring``) and past its ``expires_at``. A file
is purged once it is past its own ``expires_at`` *and* no batch that is still kept (live, or
final and not yet past its expiry) refers to it in any of those columns, nor is named by its
``batch_id``: so a live batch's input file stays, however short its upload's
``expires_after``, until that batch has expired too (an expired file answers 404 to its readers
all the same). Batches never wait for files: what a kept batch needs is never purged, and a
file whose batch is gone goes at the same run or the next.

The tables take turns, one batch each, until each is done or the time budget is spent; what is
left waits for the next run (``inferq.purge`` on beat, or ``inferq purge``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, exists, func, select, tuple_
from sqlalchemy import delete as sql_delete
from sqlalchemy.orm import aliased
from sqlalchemy.sql import Executable

from app.db.base import utcnow
from app.db.batches import LIVE_BATCH_STATES, Batch
from app.db.deliveries import Delivery, DeliveryAttempt, DeliveryStatus
from app.db.files import File, FilePart
from app.db.integrations import IntegrationEvent
from app.db.jobs import LIVE_JOB_STATUSES, Job, JobChunk
from app.db.models import FINAL_STATUSES, Prediction
from app.settings import Settings

log = logging.getLogger(__name__)

FINAL_DELIVERY = (DeliveryStatus.DELIVERED.value, DeliveryStatus.DEAD.value)
CHUNK_SHARE = 10
"""Job chunks hold the inputs and results (megabytes each), file parts a mebibyte of an upload
each: a tenth of a batch at a time."""


@dataclass(slots=True)
class PurgeReport:
    """What one run deleted (or, with ``dry_run``, would delete), per table."""

    deleted: dict[str, int]
    seconds: float
    complete: bool
    """False when the time budget ran out before every table was done."""
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


# --- what has expired ------------------------------------------------------------------------


def _prediction_expired(now: datetime) -> ColumnElement[bool]:
    return (Prediction.expires_at < now) & Prediction.status.in_(FINAL_STATUSES)


def _job_expired(job: type[Job], now: datetime) -> ColumnElement[bool]:
    return (job.expires_at < now) & job.status.not_in(LIVE_JOB_STATUSES)


def _delivery_expired(d: type[Delivery], now: datetime) -> ColumnElement[bool]:
    return (d.expires_at < now) & d.status.in_(FINAL_DELIVERY)


def _event_expired(e: type[IntegrationEvent], now: datetime) -> ColumnElement[bool]:
    return (e.expires_at < now) & (e.status != "queued")


def _batch_expired(b: type[Batch], now: datetime) -> ColumnElement[bool]:
    return (b.expires_at < now) & b.status.not_in(LIVE_BATCH_STATES)


def _file_expired(f: type[File], now: datetime) -> ColumnElement[bool]:
    """Past its expiry, and no kept batch refers to it (one anti-join per reference, each on
    one equality, so Postgres can hash them)."""
    b = aliased(Batch)
    kept = ~_batch_expired(b, now)
    return (
        (f.expires_at < now)
        & ~exists().where(b.input_file_id == f.id, kept)
        & ~exists().where(b.output_file_id == f.id, kept)
        & ~exists().where(b.error_file_id == f.id, kept)
        & ~exists().where(b.id == f.batch_id, kept)
    )


# --- one batch per table ----------------------------------------------------------------------


def _attempts(now: datetime, n: int) -> Executable:
    ids = (
        select(DeliveryAttempt.id)
        .join(Delivery, Delivery.id == DeliveryAttempt.delivery_id)
        .where(_delivery_expired(Delivery, now))
        .limit(n)
        .with_for_update(skip_locked=True, of=DeliveryAttempt)
    )
    return sql_delete(DeliveryAttempt).where(DeliveryAttempt.id.in_(ids))


def _deliveries(now: datetime, n: int) -> Executable:
    d = aliased(Delivery)
    ids = (
        select(d.id)
        .where(
            _delivery_expired(d, now),
            ~exists().where(DeliveryAttempt.delivery_id == d.id),
        )
        .limit(n)
        .with_for_update(skip_locked=True)
    )
    return sql_delete(Delivery).where(Delivery.id.in_(ids))


def _chunks(now: datetime, n: int) -> Executable:
    keys = (
        select(JobChunk.job_id, JobChunk.seq)
        .join(Job, Job.id == JobChunk.job_id)
        .where(_job_expired(Job, now))
        .limit(max(1, n // CHUNK_SHARE))
        .with_for_update(skip_locked=True, of=JobChunk)
    )
    return sql_delete(JobChunk).where(tuple_(JobChunk.job_id, JobChunk.seq).in_(keys))


def _jobs(now: datetime, n: int) -> Executable:
    j = aliased(Job)
    ids = (
        select(j.id)
        .where(_job_expired(j, now), ~exists().where(JobChunk.job_id == j.id))
        .limit(n)
        .with_for_update(skip_locked=True)
    )
    return sql_delete(Job).where(Job.id.in_(ids))


def _predictions(now: datetime, n: int) -> Executable:
    ids = (
        select(Prediction.id)
        .where(_prediction_expired(now))
        .limit(n)
        .with_for_update(skip_locked=True)
    )
    return sql_delete(Prediction).where(Prediction.id.in_(ids))


def _events(now: datetime, n: int) -> Executable:
    e = aliased(IntegrationEvent)
    ids = (
        select(e.id)
        .where(_event_expired(e, now), ~exists().where(Delivery.event_id == e.id))
        .limit(n)
        .with_for_update(skip_locked=True)
    )
    return sql_delete(IntegrationEvent).where(IntegrationEvent.id.in_(ids))


def _parts(now: datetime, n: int) -> Executable:
    keys = (
        select(FilePart.file_id, FilePart.seq)
        .join(File, File.id == FilePart.file_id)
        .where(_file_expired(File, now))
        .limit(max(1, n // CHUNK_SHARE))
        .with_for_update(skip_locked=True, of=FilePart)
    )
    return sql_delete(FilePart).where(tuple_(FilePart.file_id, FilePart.seq).in_(keys))


def _files(now: datetime, n: int) -> Executable:
    f = aliased(File)
    ids = (
        select(f.id)
        .where(_file_expired(f, now), ~exists().where(FilePart.file_id == f.id))
        .limit(n)
        .with_for_update(skip_locked=True)
    )
    return sql_delete(File).where(File.id.in_(ids))


def _batches(now: datetime, n: int) -> Executable:
    ids = (
        select(Batch.id)
        .where(_batch_expired(Batch, now))
        .limit(n)
        .with_for_update(skip_locked=True)
    )
    return sql_delete(Batch).where(Batch.id.in_(ids))


# --- what a dry run counts ----------------------------------------------------------------------


def _counts(now: datetime) -> dict[str, Executable]:
    """How many rows of each table the purge would delete now."""
    d = aliased(Delivery)
    live_delivery = exists().where(d.event_id == IntegrationEvent.id, ~_delivery_expired(d, now))
    n = func.count()
    return {
        "delivery_attempts": select(n)
        .select_from(DeliveryAttempt)
        .join(Delivery, Delivery.id == DeliveryAttempt.delivery_id)
        .where(_delivery_expired(Delivery, now)),
        "deliveries": select(n).where(_delivery_expired(Delivery, now)),
        "job_chunks": select(n)
        .select_from(JobChunk)
        .join(Job, Job.id == JobChunk.job_id)
        .where(_job_expired(Job, now)),
        "jobs": select(n).where(_job_expired(Job, now)),
        "predictions": select(n).where(_prediction_expired(now)),
        "integration_events": select(n).where(
            _event_expired(IntegrationEvent, now), ~live_delivery
        ),
        "file_parts": select(n)
        .select_from(FilePart)
        .join(File, File.id == FilePart.file_id)
        .where(_file_expired(File, now)),
        "files": select(n).select_from(File).where(_file_expired(File, now)),
        "batches": select(n).select_from(Batch).where(_batch_expired(Batch, now)),
    }


@dataclass(slots=True)
class _Step:
    table: str
    batch: Callable[[datetime, int], Executable]
    after: str | None = None
    """A table whose rows must be gone first (this step is not done before that one is)."""
    size: int = 0
    done: bool = field(default=False)


def _steps(batch_rows: int) -> list[_Step]:
    return [
        _Step("delivery_attempts", _attempts, size=batch_rows),
        _Step("deliveries", _deliveries, after="delivery_attempts", size=batch_rows),
        _Step("job_chunks", _chunks, size=max(1, batch_rows // CHUNK_SHARE)),
        _Step("jobs", _jobs, after="job_chunks", size=batch_rows),
        _Step("predictions", _predictions, size=batch_rows),
        _Step("integration_events", _events, after="deliveries", size=batch_rows),
        _Step("file_parts", _parts, size=max(1, batch_rows // CHUNK_SHARE)),
        _Step("files", _files, after="file_parts", size=batch_rows),
        _Step("batches", _batches, size=batch_rows),
    ]


def purge(
    *,
    engine: Engine,
    settings: Settings,
    dry_run: bool = False,
    now: datetime | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> PurgeReport:
    """Delete every final object past its expiry (``dry_run``: only count them).

    Parameters: ``now`` (default: the time the run starts) is what expiries are compared with;
    ``settings`` gives the batch size and the time budget.

    Returns: the rows deleted per table, how long it took and whether it finished. Also logs
    them as one ``purge`` line.
    """
    now = now or utcnow()
    start = clock()
    if dry_run:
        with engine.connect() as conn:
            counts = {t: int(conn.execute(q).scalar_one()) for t, q in _counts(now).items()}
        report = PurgeReport(counts, round(clock() - start, 3), complete=True, dry_run=True)
        log.info("purge (dry run)", extra=report.as_dict())
        return report
    steps = _steps(settings.purge_batch_rows)
    deleted = {s.table: 0 for s in steps}
    deadline = start + settings.purge_budget_seconds
    while not all(s.done for s in steps) and clock() < deadline:
        for step in steps:
            if step.done or clock() >= deadline:
                continue
            with engine.begin() as conn:
                n = conn.execute(step.batch(now, step.size)).rowcount
            deleted[step.table] += n
            before = next((s for s in steps if s.table == step.after), None)
            step.done = n < step.size and (before is None or before.done)
    report = PurgeReport(deleted, round(clock() - start, 3), complete=all(s.done for s in steps))
    log.info("purge", extra=report.as_dict())
    return report
