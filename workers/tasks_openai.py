"""Celery side of the Batch API: its step of the sweeper (beat) moves batches nobody reads on:
expired when their completion window passes with work left, finalized when their job ends."""

from __future__ import annotations

import logging

from app.openai_compat.batch_life import sweep
from workers.context import EXTRA_SWEEPS, WorkerContext

log = logging.getLogger(__name__)


def sweep_batches(ctx: WorkerContext) -> int:
    """The sweeper's step for batches; returns how many ended."""
    ended = sweep(sessions=ctx.sessions, registry=ctx.registry)
    if ended:
        log.info("batch sweeper", extra={"ended": ended})
    return ended


EXTRA_SWEEPS.append(sweep_batches)
