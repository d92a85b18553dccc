"""What every connector (Telegram, Zendesk, generic) provides, and the values they exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx

from app.integrations.config import AnswerConfig


@dataclass(slots=True)
class Reply:
    """One call to make to the other side (stored as an outbox row)."""

    action: str
    method: str
    target: str
    """Where, without any secret: a Bot API method name, an API path, a rendered URL."""
    body: Any


@dataclass(slots=True)
class Plan:
    """What to do with one inbound update or ticket."""

    external_id: str
    """Unique per integration: a second event with the same one is a duplicate."""
    kind: str
    """``message``, ``command``, ``unsupported``, ``ignored`` or ``ticket``."""
    data: dict[str, Any] = field(default_factory=dict)
    """Kept with the event: what the answer needs later (chat and message id, ticket id)."""
    text: str | None = None
    """The text to classify, if any."""
    reply: Reply | None = None
    """A canned answer sent at once, without the model."""


@dataclass(slots=True)
class Finished:
    """A prediction of an event that just reached its final state."""

    id: str
    status: str
    model: str
    model_version: str
    output: dict[str, Any] | None
    error_code: str | None


@dataclass(slots=True)
class Outgoing:
    """A fully built HTTP request (holds secrets: never logged, never stored)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class Connector(Protocol):
    """The outbound side of one kind of integration."""

    def replies(self, config: AnswerConfig, data: dict[str, Any], done: Finished) -> list[Reply]:
        """What to send once the event's prediction is final (may be nothing)."""
        ...

    def request(self, config: AnswerConfig, secrets: dict[str, str], reply: Reply) -> Outgoing:
        """The HTTP request for a stored reply, credentials added."""
        ...

    def retry_after(self, response: httpx.Response) -> float | None:
        """How long the other side asked us to wait (a 429), if it said."""
        ...


def retry_after_header(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds (it may be a number or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
