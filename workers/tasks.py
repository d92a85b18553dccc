"""Celery tasks: thin adapters over ``app``."""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from typing import Any

from celery import Task
from celery.signals import setup_logging, worker_process_shutdown, worker_ready, worker_shutdown
from sqlalchemy.exc import OperationalError

from app import tracing
from app.errors import ModelNotReady, UnknownModel
from app.logs import configure_logging
from app.predictions.executor import VersionNotHere
from app.predictions.sweeper import sweep_predictions
from workers import broker_watch
from workers.celery_app import celery_app
from workers.context import (
    EXTRA_RECOVERIES,
    EXTRA_SWEEPS,
    WorkerContext,
    close_context,
    get_context,
    message_trace,
)

log = logging.getLogger(__name__)


@celery_app.task(name="inferq.predict", bind=True, acks_late=True, max_retries=None)
def predict(self: Task, model: str, ids: list[str]) -> dict[str, Any]:
    """Run the requests ``ids`` of ``model``; acknowledged only once their results are stored."""
    ctx = get_context(celery_app)
    with tracing.span(
        "inferq.predict",
        parent=message_trace(self.request),
        root=True,
        kind=tracing.CONSUMER,
        attributes={"inferq.model": model, "inferq.requests": len(ids)},
    ):
        return _predict(self, ctx, model, ids)


def _predict(self: Task, ctx: WorkerContext, model: str, ids: list[str]) -> dict[str, Any]:
    if log.isEnabledFor(logging.DEBUG):  # in the trace of the message's first request
        log.debug("message", extra={"model": model, "count": len(ids)})
    try:
        reports = ctx.executors.run(model, ids)
    except VersionNotHere as exc:  # another worker (or this one, once pulled) runs them
        log.warning(
            "model version not on this host; requests put back",
            extra={"model": exc.model, "version": exc.version, "count": exc.count},
        )
        raise self.retry(exc=exc, countdown=2) from exc
    except (UnknownModel, ModelNotReady) as exc:
        log.error("model not servable here", extra={"model": model, "error": exc.message})
        ctx.executors.fail(ids, code=exc.code, message=exc.message, model=model)
        return {"failed": len(ids)}
    except OperationalError as exc:  # the database is away: try the message again later
        log.warning("database unavailable; retrying message", extra={"error": str(exc)[:200]})
        raise self.retry(exc=exc, countdown=2) from exc
    statuses: dict[str, int] = {}
    for r in reports:
        for k, v in r.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
    return statuses


@celery_app.task(name="inferq.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    """Beat's sweeper: publish lost work again and send webhooks that are due."""
    ctx = get_context(celery_app)
    report = sweep_predictions(
        sessions=ctx.sessions,
        publisher=ctx.publisher,
        settings=ctx.settings,
        write_hooks=ctx.executors.write_hooks,
        after_commit=ctx.executors.after_commit,
    )
    due = ctx.dispatcher.sweep()
    for extra in EXTRA_SWEEPS:
        try:
            extra(ctx)
        except Exception:
            log.exception("sweep step failed", extra={"step": getattr(extra, "__name__", "?")})
    return {
        "republished": report.republished,
        "held_back": report.held_back,
        "worker_lost": report.failed,
        "deliveries": due,
    }


@setup_logging.connect
def _logging(loglevel: Any = None, **_: Any) -> None:
    """JSON log lines for workers and beat, like the API's."""
    settings = celery_app.conf.inferq_settings
    configure_logging(settings.log_level, json=settings.log_json)


@worker_ready.connect
def _warm(sender: Any = None, **_: Any) -> None:
    """Build the context (and every model's session) before the first message arrives."""
    ctx = get_context(celery_app)
    prefix = f"{ctx.settings.queue_prefix}."
    try:
        consumed = {q.name for q in sender.task_consumer.queues}
    except AttributeError:
        consumed = {prefix + n for n in ctx.registry.names()}
    for name in ctx.registry.names():
        if prefix + name not in consumed:
            continue  # not this worker's model: do not hold its session in memory
        try:
            ctx.executors.get(name)
        except Exception:
            log.exception("could not load model", extra={"model": name})


def recover_lost_broker(lost_before: datetime) -> int:
    """The broker lost its messages (``workers.broker_watch``): publish again every request
    and job chunk published before ``lost_before`` that no live worker holds."""
    ctx = get_context(celery_app)

    def predictions(before: datetime) -> int:
        return sweep_predictions(
            sessions=ctx.sessions,
            publisher=ctx.publisher,
            settings=ctx.settings,
            write_hooks=ctx.executors.write_hooks,
            after_commit=ctx.executors.after_commit,
            lost_before=before,
        ).republished

    passes = [predictions, *(partial(step, ctx) for step in EXTRA_RECOVERIES)]
    return broker_watch.republish_lost(lost_before, passes)


celery_app.steps["consumer"].add(broker_watch.WakeOnConnect)


@worker_ready.connect
def _watch(sender: Any = None, **_: Any) -> None:
    ctx = get_context(celery_app)
    broker_watch.start(celery_app, ctx.settings, ctx.sessions, recover_lost_broker)


@worker_shutdown.connect
@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    broker_watch.stop()
    close_context()
