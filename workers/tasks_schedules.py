"""Celery side of schedules: the tick beat sends (see ``workers/beat.py``)."""

from __future__ import annotations

import logging

from app.schedules.config import ScheduleConfig
from app.schedules.runner import Ticker, tick
from workers.celery_app import celery_app
from workers.context import get_context

log = logging.getLogger(__name__)


@celery_app.task(name="inferq.schedules_tick", ignore_result=True)
def schedules_tick() -> dict[str, int]:
    """Fire due schedules, take in new files, carry out pending runs, write finished sinks."""
    ctx = get_context(celery_app)
    ticker = Ticker(
        sessions=ctx.sessions,
        publisher=ctx.publisher,
        registry=ctx.registry,
        settings=ctx.settings,
        cfg=ScheduleConfig.from_env(),
    )
    report = tick(ticker)
    if report.fired or report.files or report.ran or report.sinks:
        log.info(
            "schedules tick",
            extra={
                "fired": report.fired,
                "files": report.files,
                "ran": report.ran,
                "sinks": report.sinks,
            },
        )
    return {"fired": report.fired, "files": report.files, "ran": report.ran}
