"""The sweeper (run by beat): finds work whose message was lost and publishes it again."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.db import predictions as crud
from app.db.base import utcnow
from app.db.engine import session_scope
from app.predictions.service import Publisher
from app.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SweepReport:
    republished: int


def sweep_predictions(
    *, sessions: sessionmaker[Session], publisher: Publisher, settings: Settings
) -> SweepReport:
    """Publish again: queued ones never published or published too long ago, and running
    ones whose lease ran out (their worker died). Running twice is harmless: claims and
    result writes are conditional on the row's state."""
    now = utcnow()
    requeue_before = now - timedelta(seconds=settings.requeue_after_seconds)
    with session_scope(sessions) as s:
        stale = crud.stale(session=s, now=now, requeue_before=requeue_before)
        crud.mark_published(session=s, ids=[i for i, _, _ in stale], when=now)
    groups: dict[tuple[str, int], list[str]] = {}
    for pid, model, priority in stale:
        groups.setdefault((model, priority), []).append(pid)
    for (model, priority), ids in groups.items():
        for start in range(0, len(ids), 256):
            try:
                publisher.publish(model, ids[start : start + 256], priority)
            except Exception as exc:
                log.warning("sweeper publish failed", extra={"error": repr(exc)})
                with session_scope(sessions) as s:
                    crud.mark_published(session=s, ids=ids[start : start + 256], when=None)
    if stale:
        log.info("sweeper republished", extra={"count": len(stale)})
    return SweepReport(republished=len(stale))
