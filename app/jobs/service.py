"""Bulk jobs: create one from lines or rows, read it, cancel it, end it.

The public face of ``app.jobs``: the API, the CLI's server side and the schedules call these.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import orjson
from sqlalchemy.orm import Session, sessionmaker

from app.db.engine import session_scope
from app.db.jobs import Job, JobStatus
from app.delivery import egress
from app.delivery.webhook import BODY_LOADERS
from app.errors import Conflict, NotFound
from app.jobs import store
from app.jobs.ingest import JobPublisher, JobWriter
from app.jobs.lifecycle import JOB_FINISHED_HOOKS, JobHook, end_job
from app.jobs.lines import InputFormat
from app.predictions.views import iso
from app.registry import Registry
from app.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["JOB_FINISHED_HOOKS", "JobHook", "create_job", "job_public", "open_job"]

BLOCK_BYTES = 1 << 20


def open_job(
    *,
    sessions: sessionmaker[Session],
    publisher: JobPublisher,
    registry: Registry,
    settings: Settings,
    tenant: str,
    model: str,
    fmt: InputFormat,
    filename: str | None = None,
    callback_url: str | None = None,
    model_version: str | None = None,
    schedule_id: str | None = None,
    sink: dict[str, Any] | None = None,
    max_bytes: int | None = None,
    check_first: bool = True,
    ttl_s: float | None = None,
) -> JobWriter:
    """A writer for a new job, to ``feed`` blocks of input and then ``finish``.

    Raises ``UnknownModel``, ``EgressDenied`` for a ``callback_url`` the egress policy can
    never allow, or ``InvalidInput`` for a ``ttl_s`` over the cap, before anything is stored.
    """
    entry = registry.get(model, model_version)
    if callback_url is not None:
        egress.check_caller_url(callback_url, settings)
    return JobWriter(
        sessions=sessions,
        publisher=publisher,
        settings=settings,
        entry=entry,
        tenant=tenant,
        fmt=fmt,
        filename=filename,
        callback_url=callback_url,
        schedule_id=schedule_id,
        sink=sink,
        max_bytes=max_bytes,
        check_first=check_first,
        ttl_s=ttl_s,
    )


def create_job(
    *,
    sessions: sessionmaker[Session],
    publisher: JobPublisher,
    registry: Registry,
    settings: Settings,
    tenant: str,
    model: str,
    lines: Iterable[bytes] | Iterable[dict[str, Any]],
    fmt: Literal["jsonl", "csv", "rows"] = "rows",
    callback_url: str | None = None,
    model_version: str | None = None,
    schedule_id: str | None = None,
    provenance: dict[str, Any] | None = None,
    sink: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    ttl_s: float | None = None,
) -> Job:
    """Store a job and publish its chunks; returns it once committed (status ``queued``).

    Parameters: ``lines`` are JSONL lines (bytes) or parsed rows (dicts), each the model's input
    or ``{"custom_id", "input"}``; for ``fmt="csv"``, CSV lines starting with the header.
    ``source`` describes the input (default ``{"type": fmt}``); ``provenance`` is merged over
    what the job records itself (model name, version and sha256, inferq version, source with
    its line count, size and sha256, parameters). ``ttl_s``: how long to keep the job and its
    results (None: the tenant's retention).

    Raises: ``UnknownModel``; ``InvalidInput`` (no input, a CSV header that does not fit the
    model).
    """
    writer = open_job(
        sessions=sessions,
        publisher=publisher,
        registry=registry,
        settings=settings,
        tenant=tenant,
        model=model,
        fmt="csv" if fmt == "csv" else "jsonl",
        callback_url=callback_url,
        model_version=model_version,
        schedule_id=schedule_id,
        sink=sink,
        check_first=fmt != "rows",
        ttl_s=ttl_s,
    )
    try:
        for block in _blocks(lines, rows=fmt == "rows"):
            writer.feed(block)
        return writer.finish(source or {"type": fmt}, provenance)
    except BaseException:
        writer.abort()
        raise


def _blocks(items: Iterable[bytes] | Iterable[dict[str, Any]], *, rows: bool) -> Iterator[bytes]:
    """Lines joined into blocks of about a mebibyte. With ``rows``, every item but bytes is a
    value to dump as JSON (a str is a JSON string); otherwise a str is a line of text."""
    buf: list[bytes] = []
    size = 0
    for item in items:
        if isinstance(item, bytes | bytearray | memoryview):
            line = bytes(item)
        elif isinstance(item, str) and not rows:
            line = item.encode()
        else:
            line = orjson.dumps(item, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
        buf.append(line if line.endswith(b"\n") else line + b"\n")
        size += len(line)
        if size >= BLOCK_BYTES:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


def get_job(*, sessions: sessionmaker[Session], tenant: str, job_id: str) -> Job:
    """The tenant's job; ``NotFound`` for an unknown id or another tenant's job."""
    with session_scope(sessions) as s:
        job = store.get_job(session=s, tenant=tenant, job_id=job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(
    *, sessions: sessionmaker[Session], tenant: str, limit: int, schedule_id: str | None = None
) -> list[Job]:
    """The tenant's newest jobs first (of one schedule, if given)."""
    with session_scope(sessions) as s:
        return store.list_jobs(session=s, tenant=tenant, limit=limit, schedule_id=schedule_id)


def cancel_job(*, sessions: sessionmaker[Session], tenant: str, job_id: str) -> Job:
    """Cancel what has not started (running chunks finish); ``Conflict`` once the job ended."""
    with session_scope(sessions) as s:
        job = store.get_job(session=s, tenant=tenant, job_id=job_id, lock=True)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if JobStatus(job.status).is_final:
            raise Conflict(
                f"job {job_id} is {job.status}; only a queued or running job can be cancelled",
                code="not_cancellable",
            )
        chunks, lines = store.cancel_chunks(session=s, job_id=job_id)
        job.cancelled += lines
        job.chunks_done += chunks
        end_job(s, job, JobStatus.cancelled)
    log.info("job cancelled", extra={"job": job_id, "lines": lines})
    return job


def job_public(job: Job) -> dict[str, Any]:
    """The body of ``GET /v1/jobs/{id}`` (and of the job's webhook); absent fields left out."""
    body: dict[str, Any] = {
        "id": job.id,
        "object": "job",
        "status": job.status,
        "model": job.model,
        "model_version": job.model_version,
        "request_counts": {
            "total": job.total,
            "succeeded": job.succeeded,
            "failed": job.failed,
            "cancelled": job.cancelled,
        },
        "created_at": iso(job.created_at),
        "expires_at": iso(job.expires_at),
    }
    if job.error_code is not None:
        body["error"] = {"code": job.error_code, "message": job.error_message or ""}
    optional = {
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "schedule_id": job.schedule_id,
        "callback_url": job.callback_url,
        "results_url": f"/v1/jobs/{job.id}/results" if JobStatus(job.status).is_final else None,
        "provenance": job.provenance,
        "sink": job.sink,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def _job_body(session: Session, job_id: str) -> dict[str, object] | None:
    job = session.get(Job, job_id)
    return None if job is None else job_public(job)


BODY_LOADERS["job"] = _job_body
