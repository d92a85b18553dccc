"""Inbound: a hook's request is checked, planned, and stored as an event (plus a prediction).

The event, the prediction it asks for and any canned reply are written in one transaction;
the prediction is published after commit (``app.predictions.service.publish_rows``; a failed publish is
left to the sweeper). A retried webhook hits the event's unique external id and is answered
as a duplicate without doing anything twice.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from sqlalchemy.orm import Session, sessionmaker

from app import retention
from app.db import integrations as crud
from app.db import predictions as predictions_crud
from app.db.base import new_id, utcnow
from app.db.engine import session_scope
from app.delivery import outbox
from app.errors import InvalidInput, NotFound, Unauthorized
from app.integrations import generic, telegram, zendesk
from app.integrations.base import Plan
from app.integrations.config import GenericConfig, TelegramConfig, ZendeskConfig
from app.integrations.store import Loaded
from app.predictions import service
from app.predictions.admission import Admission
from app.registry import Registry
from app.settings import Settings


@dataclass(slots=True)
class HookDeps:
    """What accepting an event needs (the API builds it once)."""

    sessions: sessionmaker[Session]
    registry: Registry
    settings: Settings
    publisher: service.Publisher


@dataclass(slots=True)
class Accepted:
    """What became of one inbound request."""

    status: str
    """``queued`` (a prediction will answer), ``replied`` (a canned answer), ``ignored``,
    ``duplicate`` (seen before) or ``disabled``."""
    event_id: str | None = None
    prediction_id: str | None = None
    deliveries: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": True, "status": self.status}
        if self.event_id:
            body["event_id"] = self.event_id
        if self.prediction_id:
            body["prediction_id"] = self.prediction_id
        return body


def _json(body: bytes) -> Any:
    if not body:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from exc


def receive_telegram(
    integ: Loaded | None, *, bot: str, secret: str | None, body: bytes, deps: HookDeps
) -> Accepted:
    """``POST /hooks/telegram/{bot}``: check the secret token, then plan and store the update."""
    if integ is None or integ.kind != "telegram":
        raise NotFound(f"no Telegram bot {bot!r}")
    if not secret:
        raise Unauthorized(f"missing {telegram.SECRET_HEADER}")
    expected = integ.secrets["webhook_secret"]
    if not hmac.compare_digest(secret.encode(), expected.encode()):
        raise Unauthorized(f"{telegram.SECRET_HEADER} does not match this bot's secret")
    if not integ.enabled:
        return Accepted("disabled")
    cfg = cast(TelegramConfig, integ.config)
    plan = telegram.plan_update(_json(body), cfg, max_chars=deps.settings.max_text_chars)
    return accept(plan, integ=integ, deps=deps, source="telegram")


def receive_ticket(
    integ: Loaded | None,
    *,
    integration: str,
    headers: Mapping[str, str],
    body: bytes,
    deps: HookDeps,
) -> Accepted:
    """``POST /hooks/tickets/{integration}``: check the signature, then plan and store the ticket."""
    if integ is None or integ.kind not in ("zendesk", "generic"):
        raise NotFound(f"no help desk integration {integration!r}")
    plan: Plan | None
    if integ.kind == "zendesk":
        zcfg = cast(ZendeskConfig, integ.config)
        zendesk.verify(zcfg, integ.secrets, headers, body)
        if not integ.enabled:
            return Accepted("disabled")
        plan = zendesk.plan_ticket(_json(body))
    else:
        gcfg = cast(GenericConfig, integ.config)
        generic.verify(gcfg, integ.secrets, headers, body)
        if not integ.enabled:
            return Accepted("disabled")
        plan = generic.plan_ticket(_json(body), gcfg)
    if plan is None:
        return Accepted("ignored")
    if plan.text is not None:
        plan.text = plan.text[: deps.settings.max_text_chars]
    return accept(plan, integ=integ, deps=deps, source=integ.kind)


def accept(plan: Plan, *, integ: Loaded, deps: HookDeps, source: str) -> Accepted:
    """Store ``plan`` as an event (once per external id), its prediction and canned reply."""
    event_id = new_id("iev")
    rows: list[dict[str, Any]] = []
    if plan.text is not None:
        cfg = integ.config
        sub = service.Submission(
            tenant=integ.tenant,
            model=cfg.model,
            model_version=cfg.model_version,
            inputs=[{"text": plan.text}],
            priority=cfg.priority,
            metadata={
                "integration": integ.id,
                "event": event_id,
                "source": source,
                "external_id": plan.external_id,
            },
        )
        service.prepare(sub, registry=deps.registry, settings=deps.settings, now=service.now())
        rows = sub.rows
    status = "queued" if rows else ("replied" if plan.reply else "ignored")
    delivery_ids: list[str] = []
    now = utcnow()
    with session_scope(deps.sessions) as s:
        fresh = crud.insert_event(
            session=s,
            row={
                "id": event_id,
                "integration_id": integ.id,
                "tenant": integ.tenant,
                "external_id": plan.external_id,
                "kind": plan.kind,
                "status": status,
                "data": plan.data,
                "prediction_id": rows[0]["id"] if rows else None,
                "created_at": now,
                "expires_at": retention.expires_at(
                    deps.settings, retention.Kind.events, integ.tenant, now
                ),
            },
        )
        if not fresh:
            return Accepted("duplicate")
        if rows:  # the same bounds as the API (a 429 makes the sender retry later)
            (over,) = Admission(deps.settings).admit(s, [(integ.tenant, rows[0]["model"], 1)])
            if over is not None:
                raise over
        predictions_crud.insert_predictions(session=s, rows=rows)
        if plan.reply is not None:
            r = plan.reply
            delivery_ids = outbox.add(
                session=s,
                kind="integration",
                rows=[
                    {
                        "integration_id": integ.id,
                        "event_id": event_id,
                        "tenant": integ.tenant,
                        "action": r.action,
                        "method": r.method,
                        "target": r.target,
                        "body": r.body,
                    }
                ],
            )
    if rows:
        service.publish_rows(rows, publisher=deps.publisher, sessions=deps.sessions)
    return Accepted(status, event_id, rows[0]["id"] if rows else None, delivery_ids)
