"""Celery side of bulk jobs: one task per chunk, and the jobs' step of the sweeper."""

from __future__ import annotations

import gc
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from datetime import datetime
from typing import Any

from celery import Task
from celery.signals import worker_ready
from sqlalchemy.exc import OperationalError

from app import tracing
from app.jobs import service  # noqa: F401 - registers the job webhook body
from app.jobs.runner import ChunkReport, run_chunks
from app.jobs.sweep import sweep_jobs
from app.runtime.adapters import Adapter
from workers.celery_app import celery_app
from workers.context import (
    EXTRA_RECOVERIES,
    EXTRA_SWEEPS,
    WorkerContext,
    get_context,
    message_trace,
)

log = logging.getLogger(__name__)

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _chunk_pool(ctx: WorkerContext) -> ThreadPoolExecutor:
    """The threads that run chunks: one per core (more only fight over the GIL). Chunks run
    on these few threads rather than on Celery's many, so their allocations come back to the
    same few malloc arenas and the process's memory stays flat."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                ctx.settings.effective_runner_threads, thread_name_prefix="job-chunk"
            )
        return _pool


@celery_app.task(name="inferq.job_chunk", bind=True, acks_late=True, max_retries=None)
def job_chunk(self: Task, job_id: str, seq: int) -> dict[str, Any]:
    """Run chunk ``seq`` of job ``job_id`` (and then the job's next queued chunks for a while);
    acknowledged once their results are stored."""
    ctx = get_context(celery_app)
    with tracing.span(
        "inferq.job_chunk",
        parent=message_trace(self.request),
        root=True,
        kind=tracing.CONSUMER,
        attributes={"inferq.job": job_id, "inferq.chunk": seq},
    ):
        return _job_chunk(self, ctx, job_id, seq)


def _job_chunk(self: Task, ctx: WorkerContext, job_id: str, seq: int) -> dict[str, Any]:

    def adapter_for(model: str, version: str) -> Adapter:
        return ctx.executors.get(model, version).adapter

    def run() -> tuple[float, ChunkReport]:
        started = time.perf_counter()
        report = run_chunks(
            sessions=ctx.sessions,
            settings=ctx.settings,
            adapter_for=adapter_for,
            job_id=job_id,
            seq=seq,
        )
        return started, report

    queued = time.perf_counter()
    try:
        # in this task's trace context: what the chunk logs and sends (the job's webhook) is in it
        started, report = _chunk_pool(ctx).submit(copy_context().run, run).result()
    except OperationalError as exc:  # the database is away: try the message again later
        log.warning("database unavailable; retrying chunk", extra={"error": str(exc)[:200]})
        raise self.retry(exc=exc, countdown=2) from exc
    if report.deliveries:
        ctx.dispatcher.submit(report.deliveries)
    log.log(
        logging.INFO if report.chunks else logging.DEBUG,
        "job chunk",
        extra={
            "job": job_id,
            "seq": seq,
            "chunks": report.chunks,
            "lines": report.succeeded + report.failed,
            "waited_s": round(started - queued, 3),
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return {"chunks": report.chunks, "succeeded": report.succeeded, "failed": report.failed}


@worker_ready.connect
def _freeze_heap(sender: Any = None, **_: Any) -> None:
    """Move everything alive after start-up (modules, models) out of the garbage collector's
    sight: a chunk allocates hundreds of thousands of small objects, and each collection would
    otherwise walk the whole start-up heap too (a third of a tabular chunk's time)."""
    gc.freeze()


def sweep_job_chunks(ctx: WorkerContext) -> object:
    """Sweeper step: publish again chunks whose message or worker was lost."""
    return sweep_jobs(sessions=ctx.sessions, publisher=ctx.publisher, settings=ctx.settings)


def recover_job_chunks(ctx: WorkerContext, lost_before: datetime) -> int:
    """The broker lost its messages: publish again every chunk published before then."""
    return sweep_jobs(
        sessions=ctx.sessions,
        publisher=ctx.publisher,
        settings=ctx.settings,
        lost_before=lost_before,
    ).republished


EXTRA_SWEEPS.append(sweep_job_chunks)
EXTRA_RECOVERIES.append(recover_job_chunks)
