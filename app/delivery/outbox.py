"""The outbox: rows written in the transaction of what they report, listed, replayed.

A write hook that adds deliveries inside a batch's transaction ``stash``-es their ids; the
dispatcher's after-commit hook ``take_pending``-s them on the same thread and sends them, so
nothing is sent before it is committed and nothing committed is forgotten (the sweeper finds
what a dead process left behind through ``due``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app import tracing
from app.db.base import new_id, utcnow
from app.db.deliveries import Delivery, DeliveryAttempt, DeliveryStatus
from app.db.engine import session_scope
from app.errors import NotFound

_pending = threading.local()

ID_PREFIX = {"webhook": "whd", "integration": "igd"}


def stash(ids: Sequence[str]) -> None:
    """Remember deliveries this thread just wrote, for the after-commit send."""
    if ids:
        queue = getattr(_pending, "ids", None)
        if queue is None:
            queue = _pending.ids = []
        queue.extend(ids)


def take_pending() -> list[str]:
    """The deliveries this thread's write hooks made since the last call."""
    queue: list[str] = getattr(_pending, "ids", None) or []
    _pending.ids = []
    return queue


def add(*, session: Session, kind: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Add outbox rows of ``kind`` (``id`` filled in when absent; ``traceparent``: the current
    trace context's when absent); returns their ids."""
    now = utcnow()
    trace = tracing.current_header()
    full = [
        {
            "id": new_id(ID_PREFIX[kind]),
            "kind": kind,
            "status": DeliveryStatus.PENDING,
            "attempt_count": 0,
            "replay_base": 0,
            "next_attempt_at": now,
            "created_at": now,
            "traceparent": trace,
            **r,
        }
        for r in rows
    ]
    if full:
        session.execute(insert(Delivery), full)
    return [r["id"] for r in full]


def add_webhook(
    *, session: Session, tenant: str, subject_type: str, subject_id: str, url: str
) -> str:
    """One signed webhook reporting ``subject_type`` ``subject_id`` (a job, say) to ``url``."""
    (did,) = add(
        session=session,
        kind="webhook",
        rows=[
            {"tenant": tenant, "subject_type": subject_type, "subject_id": subject_id, "url": url}
        ],
    )
    return did


def _not_expired() -> Any:
    """Pending (no expiry yet), or final and not yet past ``expires_at`` (``app.retention``)."""
    return or_(Delivery.expires_at.is_(None), Delivery.expires_at > utcnow())


def due(*, session: Session, limit: int = 500) -> list[str]:
    """Pending deliveries whose time has come and that nobody holds, oldest first."""
    now = utcnow()
    return list(
        session.scalars(
            select(Delivery.id)
            .where(
                Delivery.status == DeliveryStatus.PENDING,
                Delivery.next_attempt_at <= now,
                or_(Delivery.lease_expires_at.is_(None), Delivery.lease_expires_at < now),
            )
            .order_by(Delivery.next_attempt_at)
            .limit(limit)
        ).all()
    )


def listing(
    *,
    session: Session,
    tenant: str | None,
    status: str | None = None,
    kind: str | None = None,
    before: datetime | None = None,
    limit: int = 100,
) -> list[Delivery]:
    """Deliveries newest first (``tenant`` None: every tenant's, for operators)."""
    stmt = (
        select(Delivery)
        .where(_not_expired())
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(limit)
    )
    if tenant is not None:
        stmt = stmt.where(Delivery.tenant == tenant)
    if status is not None:
        stmt = stmt.where(Delivery.status == status)
    if kind is not None:
        stmt = stmt.where(Delivery.kind == kind)
    if before is not None:
        stmt = stmt.where(Delivery.created_at < before)
    return list(session.scalars(stmt).all())


def get(*, session: Session, tenant: str | None, delivery_id: str) -> Delivery:
    """One delivery; another tenant's, or an expired one, is not found."""
    d = session.get(Delivery, delivery_id)
    if (
        d is None
        or (tenant is not None and d.tenant != tenant)
        or (d.expires_at is not None and d.expires_at <= utcnow())
    ):
        raise NotFound(f"delivery {delivery_id} not found")
    return d


def attempts(*, session: Session, delivery_ids: Sequence[str]) -> dict[str, list[DeliveryAttempt]]:
    """Every attempt of these deliveries, in order."""
    out: dict[str, list[DeliveryAttempt]] = {i: [] for i in delivery_ids}
    if delivery_ids:
        rows = session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id.in_(list(delivery_ids)))
            .order_by(DeliveryAttempt.delivery_id, DeliveryAttempt.attempt, DeliveryAttempt.id)
        )
        for a in rows:
            out[a.delivery_id].append(a)
    return out


def replay(*, session: Session, tenant: str | None, delivery_ids: Sequence[str]) -> list[str]:
    """Send dead deliveries again, with a fresh budget of attempts; returns those replayed.

    A delivery that is not dead is left alone (replaying twice sends it once); an unknown id, or
    another tenant's, is not found.
    """
    for did in delivery_ids:
        get(session=session, tenant=tenant, delivery_id=did)
    got = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(list(delivery_ids)), Delivery.status == DeliveryStatus.DEAD)
        .values(
            status=DeliveryStatus.PENDING,
            replay_base=Delivery.attempt_count,
            next_attempt_at=utcnow(),
            lease_expires_at=None,
            dead_reason=None,
            expires_at=None,  # pending again: kept until final (plus retention) once more
        )
        .returning(Delivery.id)
    )
    return list(got.scalars().all())


def public(d: Delivery, tries: Sequence[DeliveryAttempt] | None = None) -> dict[str, Any]:
    """A delivery as the API and CLI show it (never a secret: targets hold none)."""
    from app.predictions.views import iso

    body: dict[str, Any] = {
        "id": d.id,
        "kind": d.kind,
        "status": d.status,
        "attempt_count": d.attempt_count,
        "created_at": iso(d.created_at),
        "next_attempt_at": iso(d.next_attempt_at) if d.status == DeliveryStatus.PENDING else None,
        "delivered_at": iso(d.delivered_at),
        "dead_reason": d.dead_reason,
        "last_error": d.last_error,
        "expires_at": iso(d.expires_at),
    }
    if d.kind == "webhook":
        body.update(subject_type=d.subject_type, subject_id=d.subject_id, url=d.url)
    else:
        body.update(
            integration_id=d.integration_id, event_id=d.event_id, action=d.action, target=d.target
        )
    if tries is not None:
        body["attempts"] = [
            {
                "attempt": a.attempt,
                "started_at": iso(a.started_at),
                "duration_ms": round(a.duration_ms, 1),
                "status_code": a.status_code,
                "error": a.error,
                "retry_after_s": a.retry_after_s,
                "outcome": a.outcome,
            }
            for a in tries
        ]
    return body


# --- for the API and the CLI ------------------------------------------------------------------


def list_public(
    *,
    sessions: sessionmaker[Session],
    tenant: str | None,
    status: str | None = None,
    kind: str | None = None,
    before: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """``listing`` as the API shows it."""
    with session_scope(sessions) as s:
        rows = listing(
            session=s, tenant=tenant, status=status, kind=kind, before=before, limit=limit
        )
        return [public(d) for d in rows]


def detail(
    *, sessions: sessionmaker[Session], tenant: str | None, delivery_id: str
) -> dict[str, Any]:
    """One delivery with every attempt."""
    with session_scope(sessions) as s:
        d = get(session=s, tenant=tenant, delivery_id=delivery_id)
        return public(d, attempts(session=s, delivery_ids=[d.id])[d.id])


def replay_dead(
    *,
    sessions: sessionmaker[Session],
    tenant: str | None,
    delivery_ids: Sequence[str] = (),
    reason: str | None = None,
    limit: int = 1000,
) -> list[str]:
    """Replay these dead deliveries, or (no ids) up to ``limit`` dead ones, of ``reason`` if
    given; returns the ids now pending again."""
    with session_scope(sessions) as s:
        if not delivery_ids:
            stmt = (
                select(Delivery.id)
                .where(Delivery.status == DeliveryStatus.DEAD, _not_expired())
                .limit(limit)
            )
            if tenant is not None:
                stmt = stmt.where(Delivery.tenant == tenant)
            if reason is not None:
                stmt = stmt.where(Delivery.dead_reason == reason)
            delivery_ids = list(s.scalars(stmt).all())
        return replay(session=s, tenant=tenant, delivery_ids=delivery_ids) if delivery_ids else []
