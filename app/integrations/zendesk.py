"""Zendesk: a signed "ticket created" webhook in, ``PUT /api/v2/tickets/{id}.json`` out.

Zendesk signs each webhook request: ``X-Zendesk-Webhook-Signature`` is
``base64(HMAC-SHA256(signing_secret, timestamp + body))`` and
``X-Zendesk-Webhook-Signature-Timestamp`` the timestamp it used. Two payload shapes are read:
the event-subscription one (``{"type": "zen:event-type:ticket.created", "detail": {"id",
"subject", "description", …}}``) and a trigger's JSON body (``{"ticket": {"id", "subject" or
"title", "description"}}``). The write-back adds tags, sets the priority from the urgency and
leaves an internal note (``comment.public = false``), authenticated as
``{email}/token:{api_token}``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import orjson

from app.errors import InvalidInput, Unauthorized
from app.integrations.base import Finished, Outgoing, Plan, Reply, retry_after_header
from app.integrations.config import AnswerConfig, ZendeskConfig
from app.integrations.mapping import as_text, signature_matches, triage_context

SIGNATURE_HEADER = "X-Zendesk-Webhook-Signature"
TIMESTAMP_HEADER = "X-Zendesk-Webhook-Signature-Timestamp"
CREATED = "zen:event-type:ticket.created"


def verify(
    config: ZendeskConfig,
    secrets: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime | None = None,
) -> None:
    """Raise ``Unauthorized`` unless the request carries a fresh, valid Zendesk signature."""
    signature = headers.get(SIGNATURE_HEADER.lower())
    timestamp = headers.get(TIMESTAMP_HEADER.lower())
    if not signature or not timestamp:
        raise Unauthorized(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}")
    message = timestamp.encode() + body
    if not signature_matches(secrets["signing_secret"], message, signature, encoding="base64"):
        raise Unauthorized(f"{SIGNATURE_HEADER} does not match the body")
    if config.signature_tolerance_s > 0:
        try:
            when = datetime.fromisoformat(timestamp.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise Unauthorized(f"{TIMESTAMP_HEADER} is not an ISO 8601 time") from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        age = abs(((now or datetime.now(UTC)) - when).total_seconds())
        if age > config.signature_tolerance_s:
            raise Unauthorized(
                f"{TIMESTAMP_HEADER} is {age:.0f} s away from now; refusing a replay"
            )


def plan_ticket(payload: Any) -> Plan | None:
    """The ticket in a webhook body, or None for an event type other than "ticket created"."""
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object")
    kind = payload.get("type")
    if isinstance(kind, str) and kind.startswith("zen:event-type:"):
        if kind != CREATED:
            return None
        ticket = payload.get("detail")
    else:
        ticket = payload.get("ticket")
    if not isinstance(ticket, dict):
        raise InvalidInput("no ticket in the body: expected 'detail' (event) or 'ticket' (trigger)")
    ticket_id = as_text(ticket.get("id")).strip()
    if not ticket_id.isdigit():
        raise InvalidInput("the ticket's id must be a number")
    subject = as_text(ticket.get("subject") or ticket.get("title")).strip()
    description = as_text(ticket.get("description")).strip()
    text = "\n\n".join(t for t in (subject, description) if t)
    data = {"ticket_id": ticket_id, "subject": subject[:200]}
    if not text:
        return Plan(ticket_id, "ignored", {**data, "reason": "no subject or description"})
    return Plan(ticket_id, "ticket", data, text=text)


class ZendeskConnector:
    """Writes the triage back to the ticket."""

    def replies(self, config: AnswerConfig, data: dict[str, Any], done: Finished) -> list[Reply]:
        cfg = cast(ZendeskConfig, config)
        if done.status != "succeeded" or done.output is None:
            return []
        ctx = triage_context(
            output=done.output, tag_prefix=cfg.tag_prefix, priority_map=dict(cfg.priority_map)
        )
        ticket: dict[str, Any] = {
            "tags" if cfg.replace_tags else "additional_tags": ctx["tags"],
            "comment": {
                "body": f"{ctx['note']}\nModel {done.model}:{done.model_version}, "
                f"prediction {done.id}.",
                "public": False,
            },
        }
        if cfg.set_priority and ctx["priority"]:
            ticket["priority"] = ctx["priority"]
        target = f"/api/v2/tickets/{data['ticket_id']}.json"
        return [Reply("ticket_update", "PUT", target, {"ticket": ticket})]

    def request(self, config: AnswerConfig, secrets: dict[str, str], reply: Reply) -> Outgoing:
        cfg = cast(ZendeskConfig, config)
        basic = base64.b64encode(f"{cfg.email}/token:{secrets['api_token']}".encode()).decode()
        return Outgoing(
            reply.method,
            f"{cfg.base_url}{reply.target}",
            {"Content-Type": "application/json", "Authorization": f"Basic {basic}"},
            orjson.dumps(reply.body),
        )

    def retry_after(self, response: httpx.Response) -> float | None:
        return retry_after_header(response)
