"""The sweeper's queries on predictions: what to publish again, and what to give up on.

Each write is one conditional statement, so sweepers running at the same time (two beats, a
burst of sweep messages after a worker came back) never publish or fail a row twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, cast, func, literal, or_, select, update
from sqlalchemy.orm import Session

from app.db.models import BrokerEpoch, Prediction, Status
from app.db.predictions import Written
from app.poison import LOST_MESSAGE, WORKER_LOST

_T = Prediction.__table__.c
QUEUED, RUNNING = Status.queued.value, Status.running.value


@dataclass(slots=True)
class StaleRow:
    """A live prediction the sweeper may publish again."""

    id: str
    model: str
    priority: int
    published_at: datetime | None
    due: bool
    """Published again whatever the queue holds: never published (its publish failed), or its
    worker was lost and it was not published since."""


def _lost(now: datetime) -> Any:
    return and_(_T.status == RUNNING, _T.lease_expires_at < now)


def _stale(now: datetime, requeue_before: datetime) -> Any:
    """Queued and never published or published before ``requeue_before``; or running under a
    lease that ran out and not published since, or published before ``requeue_before``."""
    old = or_(_T.published_at.is_(None), _T.published_at < requeue_before)
    return or_(
        and_(_T.status == QUEUED, old),
        and_(_lost(now), or_(old, _T.published_at < _T.lease_expires_at)),
    )


def stale(
    *, session: Session, now: datetime, requeue_before: datetime, limit: int = 5000
) -> list[StaleRow]:
    """Live predictions that may need publishing again (``take_for_publish`` decides)."""
    rows = session.execute(
        select(_T.id, _T.model, _T.priority, _T.published_at, _T.status, _T.lease_expires_at)
        .where(_stale(now, requeue_before))
        .limit(limit)
    )
    return [
        StaleRow(
            r[0],
            r[1],
            r[2],
            r[3],
            r[3] is None or (r[4] == RUNNING and r[5] is not None and r[3] < r[5]),
        )
        for r in rows
    ]


def take_for_publish(
    *, session: Session, ids: Sequence[str], now: datetime, requeue_before: datetime
) -> list[tuple[str, str, int]]:
    """Mark ``ids`` published ``now`` if they are still stale; returns (id, model, priority) of
    those this call took (a concurrent sweeper that took a row first leaves it out here)."""
    if not ids:
        return []
    # rows another session holds (a worker writing them, perhaps cut off mid-transaction) are
    # skipped, not waited for: this sweep goes on, a later one takes them
    free = (
        select(_T.id)
        .where(_T.id.in_(list(ids)), _stale(now, requeue_before))
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(Prediction.__table__)  # type: ignore[arg-type]
        .where(_T.id.in_(free), _stale(now, requeue_before))
        .values(published_at=now)
        .returning(_T.id, _T.model, _T.priority)
        .execution_options(synchronize_session=False)
    )
    return [(r[0], r[1], r[2]) for r in rows]


def newest_held(*, session: Session, model: str, now: datetime) -> datetime | None:
    """When the newest of the predictions of ``model`` that live workers hold now (running
    under a lease that has not run out) was published: the queue's delivery front."""
    return session.execute(
        select(func.max(_T.published_at)).where(
            _T.status == RUNNING, _T.model == model, _T.lease_expires_at >= now
        )
    ).scalar()


def fail_lost(
    *, session: Session, now: datetime, max_attempts: int, limit: int = 1000
) -> list[Written]:
    """End as ``failed`` / ``worker_lost`` the predictions whose worker was lost
    ``max_attempts`` times (running under a lease that ran out, claimed that often)."""
    which = and_(_lost(now), _T.attempts >= max_attempts)
    prefix, suffix = LOST_MESSAGE.split("{times}")
    picked = select(_T.id).where(which).limit(limit).with_for_update(skip_locked=True)
    rows = session.execute(
        update(Prediction.__table__)  # type: ignore[arg-type]
        .where(_T.id.in_(picked), which)
        .values(
            status=Status.failed.value,
            error_code=WORKER_LOST,
            error_message=literal(prefix) + cast(_T.attempts, String) + literal(suffix),
            completed_at=now,
            lease_expires_at=None,
        )
        .returning(_T.id, _T.tenant, _T.callback_url, _T.job_id, _T["metadata"], _T.traceparent)
        .execution_options(synchronize_session=False)
    )
    return [
        Written(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4].get("integration") if isinstance(r[4], dict) else None,
            r[5],
        )
        for r in rows
    ]


def epoch_known(*, session: Session, prefix: str) -> bool:
    """Whether the broker of ``prefix`` was ever given its epoch marker."""
    return session.get(BrokerEpoch, prefix) is not None


def mark_epoch(*, session: Session, prefix: str, now: datetime) -> None:
    """Remember that the broker of ``prefix`` now holds its epoch marker."""
    row = session.get(BrokerEpoch, prefix)
    if row is None:
        session.add(BrokerEpoch(prefix=prefix, marked_at=now))
    else:
        row.marked_at = now
