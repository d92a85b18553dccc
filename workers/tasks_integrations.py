"""Integrations in the worker: answers written with the batch, sent after commit, retried by
the sweeper. Registered through ``workers.context``'s extension lists at import."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_process_shutdown, worker_shutdown

from app.db import predictions as crud
from app.db.engine import session_scope
from app.integrations import outbox
from app.integrations.config import IntegrationSettings
from app.integrations.sender import IntegrationSender
from workers.celery_app import celery_app
from workers.context import (
    EXTRA_AFTER_COMMIT,
    EXTRA_SWEEPS,
    EXTRA_WRITE_HOOKS,
    WorkerContext,
    get_context,
)

log = logging.getLogger(__name__)

_lock = threading.Lock()
_sender: IntegrationSender | None = None


def sender(ctx: WorkerContext | None = None) -> IntegrationSender:
    """This process's sender, built on first use (threads of its own, never a batch's)."""
    global _sender
    with _lock:
        if _sender is None:
            ctx = ctx or get_context(celery_app)
            _sender = IntegrationSender(ctx.sessions, ctx.settings, IntegrationSettings())
        return _sender


def send_after_commit(written: list[crud.Written]) -> None:
    """After-commit hook: hand the deliveries the write hook just made to the sender."""
    ids = outbox.take_pending()
    if ids:
        sender().submit(ids)


def sweep_integrations(ctx: WorkerContext) -> dict[str, int]:
    """Sweep step: answer events whose write hook did not run, send deliveries that are due."""
    with session_scope(ctx.sessions) as s:
        made = outbox.reconcile(s)
    s_ = sender(ctx)
    due = s_.due()
    s_.submit(due)
    if made or due:
        log.info("integration sweep", extra={"answered": len(made), "due": len(due)})
    return {"answered": len(made), "due": len(due)}


EXTRA_WRITE_HOOKS.append(outbox.write_hook)
EXTRA_AFTER_COMMIT.append(send_after_commit)
EXTRA_SWEEPS.append(sweep_integrations)


def _close(**_: Any) -> None:
    global _sender
    with _lock:
        if _sender is not None:
            _sender.close()
            _sender = None


worker_shutdown.connect(_close, weak=False)
worker_process_shutdown.connect(_close, weak=False)
