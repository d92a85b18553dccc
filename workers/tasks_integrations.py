"""Integrations in the worker: answers written with the batch (the write hook puts them in the
outbox), sent after commit by the worker's one dispatcher, retried by the sweeper. Registered
through ``workers.context``'s extension lists at import."""

from __future__ import annotations

import logging

from app.db.engine import session_scope
from app.integrations import outbox
from workers.context import EXTRA_SWEEPS, EXTRA_WRITE_HOOKS, WorkerContext

log = logging.getLogger(__name__)


def sweep_integrations(ctx: WorkerContext) -> dict[str, int]:
    """Sweep step: answer events whose write hook did not run (their deliveries go out now)."""
    with session_scope(ctx.sessions) as s:
        made = outbox.reconcile(s)
    ctx.dispatcher.submit(made)
    if made:
        log.info("integration sweep", extra={"answered": len(made)})
    return {"answered": len(made)}


EXTRA_WRITE_HOOKS.append(outbox.write_hook)
EXTRA_SWEEPS.append(sweep_integrations)
