"""A batch's life: made from an input file into a job, read with OpenAI's status names,
expired when its completion window passes, cancelled, finalized into its output and error
files.

``POST /v1/batches`` checks the input file line by line while it answers (``batch_plan``): the
job exists, queued, when the batch is returned, so ``validating`` is never seen. The status a
reader sees is the stored state (``app.db.batches.BatchState``) read with the job:
``in_progress`` until the job ends, then ``finalizing`` until the output is counted, then
``completed``; ``cancelling`` and, past the window, ``finalizing`` until the job's running
chunks are done, then ``cancelled`` or ``expired``. Each read moves a batch on (window passed,
job ended) as the beat sweeper's step does (``sweep``), so neither waits for the other.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from uuid import uuid4

from sqlalchemy import or_, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from app import retention
from app.db.base import utcnow
from app.db.batches import LIVE_BATCH_STATES, Batch, BatchState
from app.db.engine import session_scope
from app.db.jobs import Job, JobStatus
from app.errors import Conflict, InvalidInput, NotFound
from app.jobs import service as jobs
from app.jobs.ingest import JobPublisher, JobWriter
from app.openai_compat import batch_life, files
from app.openai_compat.batch_plan import ENDPOINTS, Planner
from app.openai_compat.tokens import TokenCounter
from app.openai_compat.wire import unix
from app.registry import Registry
from app.settings import Settings

log = logging.getLogger(__name__)

WINDOWS = ("24h",)
BLOCK_BYTES = 1 << 20
MAX_METADATA = 16


def create_batch(
    *,
    sessions: sessionmaker[Session],
    publisher: JobPublisher,
    registry: Registry,
    settings: Settings,
    counter: TokenCounter,
    tenant: str,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Check ``input_file_id`` line by line, store its job and the batch; the batch object.

    Raises ``InvalidInput`` (an endpoint or window not served, a file not for ``batch`` or with
    no request lines or too many), ``NotFound`` (the file), ``OverLimit`` (admission).
    """
    if endpoint not in ENDPOINTS:
        raise InvalidInput(f"endpoint must be one of {list(ENDPOINTS)}, got {endpoint!r}")
    if completion_window not in WINDOWS:
        raise InvalidInput(f"completion_window must be '24h', got {completion_window!r}")
    _check_metadata(metadata)
    with session_scope(sessions) as s:
        f = files.get_file(session=s, tenant=tenant, file_id=input_file_id)
        if f.purpose != "batch":
            raise InvalidInput(f"file {f.id} has purpose {f.purpose!r}, not 'batch'")
        filename = f.filename
    batch_id = f"batch_{uuid4().hex}"
    planner = Planner(registry, settings, counter.count, endpoint)
    job = _plan_and_store(
        sessions, publisher, registry, settings, planner, tenant, input_file_id, batch_id, filename
    )
    now = utcnow()
    batch = Batch(
        id=batch_id,
        tenant=tenant,
        status=BatchState.in_progress.value,
        job_id=None if job is None else job.id,
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window=completion_window,
        model=None if planner.model is None else planner.model.manifest.name,
        metadata_=metadata,
        plan=b"\n".join(planner.entries),
        total=len(planner.entries),
        texts=planner.texts,
        refused=planner.refused,
        times={"in_progress_at": unix(now)},
        created_at=now,
        window_ends_at=now + timedelta(seconds=settings.batch_window_seconds),
        expires_at=job.expires_at
        if job is not None
        else retention.expires_at(settings, retention.Kind.jobs, tenant, now),
    )
    # a crash between the job's commit and this one leaves a job nobody reads: it runs, and
    # is purged with its retention, while the caller, who got an error, sends the batch again
    with session_scope(sessions) as s:
        s.add(batch)
        s.flush()
        batch_life.advance(s, sessions, registry, batch, now)  # no valid line: completed at once
        return batch_public(s, batch)


def _plan_and_store(
    sessions: sessionmaker[Session],
    publisher: JobPublisher,
    registry: Registry,
    settings: Settings,
    planner: Planner,
    tenant: str,
    file_id: str,
    batch_id: str,
    filename: str,
) -> Job | None:
    """Feed the file's request lines through ``planner`` into a new job (None: no valid line)."""
    writer: JobWriter | None = None
    buf: list[bytes] = []
    size = 0
    try:
        for raw in files.lines_of(files.read_parts(sessions, file_id)):
            if not raw.strip():
                continue
            if len(planner.entries) >= settings.batch_max_requests:
                raise InvalidInput(
                    f"the input file has more than {settings.batch_max_requests} requests"
                )
            for job_line in planner.take(raw):
                buf.append(job_line + b"\n")
                size += len(job_line) + 1
            if size >= BLOCK_BYTES:
                writer = writer or _open(sessions, publisher, registry, settings, planner, tenant)
                writer.feed(b"".join(buf))
                buf, size = [], 0
        if not planner.entries:
            raise InvalidInput(f"file {file_id} has no request lines", code="empty_input")
        if buf:
            writer = writer or _open(sessions, publisher, registry, settings, planner, tenant)
            writer.feed(b"".join(buf))
        if writer is None:
            return None
        source = {"type": "openai_batch", "file_id": file_id, "filename": filename}
        return writer.finish(source, {"openai_batch": batch_id})
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _open(
    sessions: sessionmaker[Session],
    publisher: JobPublisher,
    registry: Registry,
    settings: Settings,
    planner: Planner,
    tenant: str,
) -> JobWriter:
    assert planner.model is not None  # job lines come only from a valid line
    m = planner.model.manifest
    return jobs.open_job(
        sessions=sessions,
        publisher=publisher,
        registry=registry,
        settings=settings,
        tenant=tenant,
        model=m.name,
        model_version=m.version,
        fmt="jsonl",
        check_first=False,
    )


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA:
        raise InvalidInput(f"metadata may hold at most {MAX_METADATA} pairs")
    for k, v in metadata.items():
        if len(k) > 64 or not isinstance(v, str) or len(v) > 512:
            raise InvalidInput("metadata keys must be at most 64 characters, values strings of 512")


# --- reading ------------------------------------------------------------------------------------


def public_status(batch: Batch, job: Job | None) -> str:
    """OpenAI's name for where ``batch`` is."""
    state = BatchState(batch.status)
    if state == BatchState.in_progress:
        return "finalizing" if job is None or JobStatus(job.status).is_final else "in_progress"
    if state == BatchState.expiring:
        return "finalizing"
    return state.value


def _counts(batch: Batch, job: Job | None) -> dict[str, int]:
    """Requests by outcome: exact once final; before, from the job's texts (exact when every
    line holds one text, else scaled to lines)."""
    if batch.request_counts is not None:
        return dict(batch.request_counts)
    ok = failed = 0
    if job is not None and batch.texts:
        lines = batch.total - batch.refused
        ok = job.succeeded * lines // batch.texts
        failed = job.failed * lines // batch.texts
    return {"total": batch.total, "completed": ok, "failed": batch.refused + failed}


def batch_public(s: Session, batch: Batch) -> dict[str, Any]:
    """OpenAI's batch object."""
    job = None if batch.job_id is None else s.get(Job, batch.job_id)
    times = batch.times or {}
    body: dict[str, Any] = {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "errors": batch.errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": public_status(batch, job),
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": unix(batch.created_at),
        "expires_at": unix(batch.window_ends_at),
        "request_counts": _counts(batch, job),
        "metadata": batch.metadata_,
        "job_id": batch.job_id,
    }
    for step in STEPS:
        body[f"{step}_at"] = times.get(f"{step}_at")
    return body


STEPS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


def _gone(settings: Settings, batch: Batch | None, tenant: str, batch_id: str) -> bool:
    return (
        batch is None
        or batch.tenant != tenant
        or retention.is_expired(BatchState(batch.status).is_final, batch.expires_at, utcnow())
    )


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"No such Batch object: {batch_id}", code="batch_not_found")


def get_batch(
    *,
    sessions: sessionmaker[Session],
    registry: Registry,
    settings: Settings,
    tenant: str,
    batch_id: str,
) -> dict[str, Any]:
    """The tenant's batch, moved on first (``batch_life.advance``); ``NotFound`` otherwise."""
    with session_scope(sessions) as s:
        batch = batch_life.lock(s, tenant, batch_id)
        if batch is not None:
            batch_life.advance(s, sessions, registry, batch, utcnow())
        else:  # someone else is moving it on: read it as it is
            batch = s.get(Batch, batch_id)
        if _gone(settings, batch, tenant, batch_id):
            raise _not_found(batch_id)
        assert batch is not None
        return batch_public(s, batch)


def list_batches(
    *,
    sessions: sessionmaker[Session],
    registry: Registry,
    settings: Settings,
    tenant: str,
    after: str | None,
    limit: int,
) -> dict[str, Any]:
    """The tenant's batches, newest first, ``limit`` after the batch ``after``."""
    now = utcnow()
    with session_scope(sessions) as s:
        stmt = select(Batch).where(Batch.tenant == tenant)
        stmt = stmt.where(or_(Batch.status.in_(LIVE_BATCH_STATES), Batch.expires_at > now))
        if after is not None:
            mark = s.get(Batch, after)
            if mark is None or mark.tenant != tenant:
                raise InvalidInput(f"after: no batch {after!r}")
            stmt = stmt.where(tuple_(Batch.created_at, Batch.id) < tuple_(mark.created_at, mark.id))
        rows = list(
            s.scalars(
                stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)
            ).all()
        )
        page = rows[:limit]
        data = [batch_public(s, b) for b in page]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(rows) > limit,
    }


def cancel_batch(
    *,
    sessions: sessionmaker[Session],
    registry: Registry,
    settings: Settings,
    tenant: str,
    batch_id: str,
) -> dict[str, Any]:
    """Cancel what of the batch has not run: ``cancelling`` until its running chunks are done,
    then ``cancelled``. ``Conflict`` once the batch has ended."""
    now = utcnow()
    with session_scope(sessions) as s:
        batch = batch_life.lock(s, tenant, batch_id, wait=True)
        if batch is None or _gone(settings, batch, tenant, batch_id):
            raise _not_found(batch_id)
        batch_life.advance(s, sessions, registry, batch, now)
        if BatchState(batch.status).is_final:
            raise Conflict(
                f"batch {batch_id} is {batch.status}; only a batch in progress can be cancelled",
                code="batch_not_cancellable",
            )
        if batch.status == BatchState.in_progress:
            batch.status = BatchState.cancelling.value
            batch.times = {**batch.times, "cancelling_at": unix(now)}
            batch_life.stop(sessions, batch)
            batch_life.advance(s, sessions, registry, batch, now)
        return batch_public(s, batch)
