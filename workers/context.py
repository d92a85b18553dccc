"""What a worker process builds once at start-up and every task shares."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app import clock, tracing
from app.db.engine import make_engine, make_sessionmaker
from app.delivery import webhook
from app.delivery.dispatcher import Dispatcher
from app.delivery.engine import build_dispatcher
from app.predictions.executor import AfterCommit, ExecutorPool, WriteHook
from app.registry import Registry
from app.settings import Settings
from workers.celery_app import queue_name

log = logging.getLogger(__name__)

# Extension points for other features (jobs, integrations), filled at import time of their
# task modules (``workers/tasks_*.py``), which Celery imports before the context is built.
EXTRA_WRITE_HOOKS: list[WriteHook] = []
"""Called inside the transaction that stores a batch's results."""
EXTRA_AFTER_COMMIT: list[AfterCommit] = []
"""Called after that transaction commits."""
EXTRA_SWEEPS: list[Callable[[WorkerContext], object]] = []
EXTRA_RECOVERIES: list[Callable[[WorkerContext, datetime], int]] = []
"""Called when the broker lost its messages (``workers.broker_watch``): publish again what was
published before the given time; returns how many."""
"""Called by the sweeper task (beat, every ``sweep_interval_seconds``)."""


def trace_headers() -> dict[str, str] | None:
    """The message headers that carry the current trace context (``app.tracing``)."""
    header = tracing.current_header()
    return None if header is None else {"traceparent": header}


def message_trace(request: Any) -> tracing.TraceContext | None:
    """The trace context a task's message carries (its ``traceparent`` header), if any."""
    header = request.get("traceparent") or (getattr(request, "headers", None) or {}).get(
        "traceparent"
    )
    return tracing.parse(header) if isinstance(header, str) else None


def ready_messages(channel: Any, queue: str) -> int:
    """Ready messages on ``queue`` by a passive declare (Redis: the list's length, RabbitMQ:
    the queue's message count); 0 when there is no such queue (Redis drops an empty list).
    Other errors are raised (an AMQP channel is closed by the 404 too)."""
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except Exception as exc:
        if str(getattr(exc, "reply_code", "")) == "404":
            return 0
        raise


class CeleryPublisher:
    """``app.predictions.service.Publisher`` on Celery: one ``inferq.predict`` message per call."""

    def __init__(self, celery: Celery, settings: Settings) -> None:
        self.celery = celery
        self.settings = settings

    def check(self) -> None:
        """Raise unless the broker answers (used by ``/readyz``)."""
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    def publish(self, model: str, ids: Sequence[str], priority: int) -> None:
        self.celery.send_task(
            "inferq.predict",
            args=[model, list(ids)],
            # what Celery logs for the task (else a saferepr of every id, per publish and twice
            # per task in the worker's log at INFO)
            argsrepr=f"[{model!r}, <{len(ids)} ids>]",
            queue=queue_name(self.settings, model),
            headers=trace_headers(),
        )

    def depth(self, model: str) -> int | None:
        """``app.requeue.QueueDepth``: ready messages on the model's queue (not those workers
        hold unacknowledged), by a passive declare (Redis: the list's length, RabbitMQ: the
        queue's message count); None when the broker cannot say."""
        try:
            with self.celery.connection_for_write() as conn:
                return ready_messages(conn.default_channel, queue_name(self.settings, model))
        except Exception as exc:
            log.warning("queue depth unknown", extra={"model": model, "error": repr(exc)})
            return None

    def publish_job_chunk(self, model: str, job_id: str, seq: int) -> None:
        """``app.jobs.ingest.JobPublisher``: one ``inferq.job_chunk`` message per chunk."""
        self.celery.send_task(
            "inferq.job_chunk",
            args=[job_id, seq],
            queue=queue_name(self.settings, model),
            headers=trace_headers(),
        )


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    registry: Registry
    dispatcher: Dispatcher
    executors: ExecutorPool
    publisher: CeleryPublisher


_lock = threading.Lock()
_context: WorkerContext | None = None


def get_context(celery: Celery) -> WorkerContext:
    """The process's context, built on first use."""
    global _context
    with _lock:
        if _context is None:
            settings: Settings = celery.conf.inferq_settings
            tracing.configure(settings.otel_exporter, service="inferq-worker")
            engine = make_engine(
                settings,
                pool_size=settings.worker_concurrency + 8,
                async_commit=True,
                ping_idle_only=True,  # a claim or write on a dead connection is retried
            )
            clock.keep_synced(engine)  # leases and waits on the database's clock
            sessions = make_sessionmaker(engine)
            dispatcher = build_dispatcher(sessions, settings)
            executors = ExecutorPool(
                Registry(settings.models_dir),
                sessions=sessions,
                settings=settings,
                write_hooks=[webhook.write_hook, *EXTRA_WRITE_HOOKS],
                after_commit=[dispatcher.send_pending, *EXTRA_AFTER_COMMIT],
            )
            _context = WorkerContext(
                settings,
                engine,
                sessions,
                executors.registry,
                dispatcher,
                executors,
                CeleryPublisher(celery, settings),
            )
            log.info("worker context ready", extra={"models": executors.registry.names()})
        return _context


def close_context() -> None:
    global _context
    with _lock:
        if _context is not None:
            _context.executors.stop()
            _context.dispatcher.close()
            _context.engine.dispose()
            _context = None
            tracing.shutdown()
