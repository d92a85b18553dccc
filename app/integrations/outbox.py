"""Outbound: answers become outbox rows in the batch's own transaction, then go out.

``complete`` runs inside the transaction that stores a batch (a worker write hook): for every
finished prediction that an inbound event asked for, it writes the deliveries (``sendMessage``,
the ticket update) in that same transaction, so an answer is never lost and never written twice
(the event moves from ``queued`` to ``done`` under a guard). ``reconcile`` does the same later
for any event whose hook did not run. The delivery engine (``app.delivery``) sends them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.integrations import Integration, IntegrationEvent
from app.db.models import FINAL_STATUSES, Prediction
from app.delivery import outbox
from app.integrations.base import Connector, Finished
from app.integrations.config import validate_config
from app.integrations.generic import GenericConnector
from app.integrations.telegram import TELEGRAM_API, TelegramConnector
from app.integrations.zendesk import ZendeskConnector

log = logging.getLogger(__name__)


def connectors(telegram_api_base: str = TELEGRAM_API) -> dict[str, Connector]:
    """One connector per kind; ``telegram_api_base`` serves bots that set none."""
    return {
        "telegram": TelegramConnector(telegram_api_base),
        "zendesk": ZendeskConnector(),
        "generic": GenericConnector(),
    }


_BUILDERS = connectors()  # building replies needs no setting


def complete(session: Session, prediction_ids: Sequence[str]) -> list[str]:
    """Write the deliveries of the events whose predictions just finished; returns their ids.

    One guarded ``UPDATE … RETURNING`` finds the events (nothing else runs when there are none).
    """
    if not prediction_ids:
        return []
    claimed = session.execute(
        update(IntegrationEvent)
        .where(
            IntegrationEvent.prediction_id.in_(list(prediction_ids)),
            IntegrationEvent.status == "queued",
        )
        .values(status="done")
        .returning(
            IntegrationEvent.id,
            IntegrationEvent.integration_id,
            IntegrationEvent.tenant,
            IntegrationEvent.data,
            IntegrationEvent.prediction_id,
        )
    ).all()
    if not claimed:
        return []
    integ_ids = {c.integration_id for c in claimed}
    integs = {
        i.id: i
        for i in session.scalars(select(Integration).where(Integration.id.in_(integ_ids))).all()
    }
    preds = {
        p.id: p
        for p in session.scalars(
            select(Prediction).where(Prediction.id.in_([c.prediction_id for c in claimed]))
        ).all()
    }
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for c in claimed:
        made = _replies(integs.get(c.integration_id), preds.get(c.prediction_id), c.data)
        if not made:
            failed.append(c.id)
        rows += [
            {
                "integration_id": c.integration_id,
                "event_id": c.id,
                "tenant": c.tenant,
                "action": r.action,
                "method": r.method,
                "target": r.target,
                "body": r.body,
                "traceparent": getattr(preds.get(c.prediction_id), "traceparent", None),
            }
            for r in made
        ]
    if failed:
        session.execute(
            update(IntegrationEvent).where(IntegrationEvent.id.in_(failed)).values(status="failed")
        )
    return outbox.add(session=session, kind="integration", rows=rows)


def _replies(integ: Integration | None, pred: Prediction | None, data: dict[str, Any]) -> list[Any]:
    if integ is None or pred is None:
        return []
    done = Finished(
        pred.id, pred.status, pred.model, pred.model_version, pred.output, pred.error_code
    )
    try:
        config = validate_config(integ.kind, integ.config)
        return _BUILDERS[integ.kind].replies(config, data, done)
    except Exception:  # a bad template must not fail the batch that carries it
        log.exception("could not build the answer", extra={"integration": integ.id})
        return []


def write_hook(session: Session, written: Sequence[Any]) -> None:
    """Executor write hook: ``complete`` under a savepoint, so a failure here (say, a missing
    table) costs the answers, which ``reconcile`` makes later, never the batch."""
    ids = [w.id for w in written if getattr(w, "integration", None)]
    if not ids:  # most batches come from the API or jobs: nothing to answer, no query
        return
    try:
        with session.begin_nested():
            made = complete(session, ids)
    except Exception:
        log.exception("integration write hook failed; the sweeper will answer later")
        return
    outbox.stash(made)


def reconcile(session: Session, limit: int = 500) -> list[str]:
    """Answer events whose prediction is final but whose write hook did not run."""
    ids = session.scalars(
        select(IntegrationEvent.prediction_id)
        .join(Prediction, Prediction.id == IntegrationEvent.prediction_id)
        .where(IntegrationEvent.status == "queued", Prediction.status.in_(FINAL_STATUSES))
        .limit(limit)
    ).all()
    return complete(session, [i for i in ids if i])
