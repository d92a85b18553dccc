"""Celery side of retention: the purge of expired objects that beat sends (``workers/beat.py``)."""

from __future__ import annotations

from typing import Any

from app.purge import purge as purge_expired
from workers.celery_app import celery_app
from workers.context import get_context


@celery_app.task(name="inferq.purge", ignore_result=True)
def purge() -> dict[str, Any]:
    """Delete final objects past their expiry, in short batches, within the time budget."""
    ctx = get_context(celery_app)
    return purge_expired(engine=ctx.engine, settings=ctx.settings).as_dict()
