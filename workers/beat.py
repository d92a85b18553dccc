"""What beat sends for schedules (one ``inferq.schedules_tick`` every few seconds) and for
retention (one ``inferq.purge`` every ``INFERQ_PURGE_INTERVAL_SECONDS``).

Why a tick and not a database-backed beat scheduler (sqlalchemy-celery-beat,
django-celery-beat-style): schedules are tenant objects with sources, watermarks and run
history that live in inferq's own tables, and a second copy of them in a scheduler's tables
would have to be kept in step. With a tick, beat stays stateless (its only entries are static:
the sweeper and this), a schedule created, changed or disabled through the API counts at the
next tick without any restart, and the worker that takes the tick claims due schedules with
``SELECT … FOR UPDATE SKIP LOCKED`` and advances ``next_run_at`` in the same transaction, so two
beats (a failover left running, a tick message delivered twice) never fire a schedule twice.
The cost is a small message every ``INFERQ_SCHEDULE_TICK_SECONDS`` (5 s by default), which is
also the watcher's scan interval and the longest delay before a due schedule fires.
"""

from __future__ import annotations

from typing import Any

from app.schedules.config import ScheduleConfig
from app.settings import Settings


def schedule_entries(settings: Settings, cfg: ScheduleConfig | None = None) -> dict[str, Any]:
    """The beat entry of the schedules tick (merged into ``beat_schedule``)."""
    cfg = cfg or ScheduleConfig.from_env()
    return {
        "inferq-schedules": {
            "task": "inferq.schedules_tick",
            "schedule": cfg.tick_seconds,
            # a tick nobody took in time is dropped: the next one does the same work
            "options": {
                "queue": f"{settings.queue_prefix}.maintenance",
                "expires": max(2 * cfg.tick_seconds, 5.0),
            },
        }
    }


def retention_entries(settings: Settings) -> dict[str, Any]:
    """The beat entry of the purge of expired objects (``inferq.purge``)."""
    return {
        "inferq-purge": {
            "task": "inferq.purge",
            "schedule": settings.purge_interval_seconds,
            # runs that overlap share the work (SKIP LOCKED); one nobody took is dropped
            "options": {
                "queue": f"{settings.queue_prefix}.maintenance",
                "expires": settings.purge_interval_seconds,
            },
        }
    }
