"""Any help desk, by configuration: where the id and text are, how it signs, how to write back.

Example config (a desk that signs with ``X-Desk-Signature: sha256=<hex>`` and takes a PATCH)::

    {"id_field": "/data/ticket/id", "text_fields": ["data.ticket.title", "data.ticket.body"],
     "event_field": "event", "event_values": ["ticket.created"],
     "signature_header": "X-Desk-Signature", "signature_prefix": "sha256=",
     "write_back": {"url": "https://desk.example.com/api/tickets/{{ticket_id}}",
                    "method": "PATCH",
                    "body": {"labels": "{{tags}}", "priority": "{{priority}}",
                             "internal_note": "{{note}}"},
                    "headers": {"Authorization": "Bearer {{secret.api_token}}"}}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import httpx
import orjson

from app.errors import InvalidInput, Unauthorized
from app.integrations.base import Finished, Outgoing, Plan, Reply, retry_after_header
from app.integrations.config import AnswerConfig, GenericConfig
from app.integrations.mapping import (
    as_text,
    lookup,
    placeholders,
    render,
    signature_matches,
    triage_context,
)

# Names a write-back URL or body may use (besides the model's own heads, e.g. category).
KNOWN = {
    "ticket_id",
    "prediction_id",
    "model",
    "model_version",
    "output",
    "tags",
    "priority",
    "note",
    "category",
    "urgency",
    "category_score",
    "urgency_score",
}
DEFAULT_BODY = {
    "ticket_id": "{{ticket_id}}",
    "category": "{{category}}",
    "urgency": "{{urgency}}",
    "priority": "{{priority}}",
    "tags": "{{tags}}",
    "note": "{{note}}",
}


def check_templates(config: GenericConfig) -> None:
    """Refuse unknown placeholders, and secrets anywhere but in headers (the outbox stores the
    rendered URL and body)."""
    wb = config.write_back
    for where, template in (("url", wb.url), ("body", wb.body)):
        for name in placeholders(template):
            if name.split(".")[0] not in KNOWN:
                raise InvalidInput(
                    f"config.write_back.{where}: unknown placeholder {{{{{name}}}}}; "
                    f"known: {sorted(KNOWN)}"
                )
    for name in placeholders(wb.headers):
        if not name.startswith("secret."):
            raise InvalidInput(
                f"config.write_back.headers: only {{{{secret.<name>}}}} placeholders are "
                f"allowed, got {{{{{name}}}}}"
            )


def verify(
    config: GenericConfig, secrets: Mapping[str, str], headers: Mapping[str, str], body: bytes
) -> None:
    """Raise ``Unauthorized`` unless ``signature_header`` holds the HMAC-SHA256 of the body."""
    signature = headers.get(config.signature_header.lower())
    if not signature:
        raise Unauthorized(f"missing {config.signature_header}")
    message = body
    if config.timestamp_header:
        timestamp = headers.get(config.timestamp_header.lower())
        if not timestamp:
            raise Unauthorized(f"missing {config.timestamp_header}")
        message = timestamp.encode() + body
    if not signature_matches(
        secrets["signing_secret"],
        message,
        signature,
        encoding=config.signature_encoding,
        prefix=config.signature_prefix,
    ):
        raise Unauthorized(f"{config.signature_header} does not match the body")


def plan_ticket(payload: Any, config: GenericConfig) -> Plan | None:
    """The ticket found through the field mapping, or None when ``event_field`` rules it out."""
    if not isinstance(payload, dict | list):
        raise InvalidInput("the body must be a JSON object")
    if config.event_field is not None:
        event = as_text(lookup(payload, config.event_field))
        if event not in config.event_values:
            return None
    ticket_id = as_text(lookup(payload, config.id_field)).strip()
    if not ticket_id:
        raise InvalidInput(f"no ticket id at {config.id_field!r}")
    if len(ticket_id) > 255:
        raise InvalidInput("the ticket id is longer than 255 characters")
    parts = [as_text(lookup(payload, f)).strip() for f in config.text_fields]
    text = "\n\n".join(p for p in parts if p)
    data = {"ticket_id": ticket_id}
    if not text:
        return Plan(ticket_id, "ignored", {**data, "reason": "no text in text_fields"})
    return Plan(ticket_id, "ticket", data, text=text)


class GenericConnector:
    """Renders the configured write-back; credentials come from ``{{secret.<name>}}``."""

    def replies(self, config: AnswerConfig, data: dict[str, Any], done: Finished) -> list[Reply]:
        cfg = cast(GenericConfig, config)
        if done.status != "succeeded" or done.output is None:
            return []
        ctx = triage_context(
            output=done.output, tag_prefix=cfg.tag_prefix, priority_map=cfg.priority_map
        )
        ctx.update(
            ticket_id=data["ticket_id"],
            prediction_id=done.id,
            model=done.model,
            model_version=done.model_version,
        )
        wb = cfg.write_back
        url = str(render(wb.url, ctx))
        body = render(wb.body if wb.body is not None else DEFAULT_BODY, ctx)
        return [Reply("write_back", wb.method, url, body)]

    def request(self, config: AnswerConfig, secrets: dict[str, str], reply: Reply) -> Outgoing:
        cfg = cast(GenericConfig, config)
        headers = {"Content-Type": "application/json"}
        headers.update(
            {k: str(v) for k, v in render(cfg.write_back.headers, {"secret": secrets}).items()}
        )
        return Outgoing(reply.method, reply.target, headers, orjson.dumps(reply.body))

    def retry_after(self, response: httpx.Response) -> float | None:
        return retry_after_header(response)
