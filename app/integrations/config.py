"""What an integration is made of: settings of the feature, and each kind's config and secrets.

Config is what the API shows back; secrets (bot token, webhook secret, signing secret, API
token) are accepted, stored encrypted and never shown. Each kind validates both, so a bad
integration is refused when it is created, not when its first webhook arrives.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import InvalidInput

KINDS: tuple[str, ...] = ("telegram", "zendesk", "generic")
Priority = Literal["low", "normal", "high", "urgent"]
URGENCY_TO_PRIORITY: dict[str, Priority] = {
    "low": "low",
    "normal": "normal",
    "high": "high",
    "urgent": "urgent",
}
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class IntegrationSettings(BaseSettings):
    """Settings of the event hooks. Every field maps to ``INFERQ_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="INFERQ_", extra="ignore")

    integrations: list[dict[str, Any]] = Field(default_factory=list)
    """Integrations configured by settings: a JSON list of ``{"id", "tenant"?, "kind", "name"?,
    "config", "secrets"}``; kept in the database at start-up, read-only through the API."""

    secrets_key: str = ""
    """Fernet key(s) for integration secrets, comma-separated (the first encrypts; all decrypt,
    which is how a key is rotated). A passphrase works too. Empty: derived from
    ``INFERQ_WEBHOOK_SECRET``."""

    integration_timeout_seconds: float = 10.0
    """Timeout of one write-back call (``sendMessage``, a ticket update)."""

    integration_max_attempts: int = 10
    """Attempts before a write-back is given up."""

    integration_backoff_base_seconds: float = 1.0
    """First retry delay of a write-back; each further one doubles (a 429's wait wins)."""

    integration_backoff_max_seconds: float = 300.0
    """Longest delay between two attempts (also caps a 429's ``retry_after``)."""

    integration_sender_threads: int = 4
    """Threads per process sending write-backs (never the threads that run batches)."""

    telegram_api_base: str = "https://api.telegram.org"
    """Bot API base URL for bots that do not set their own."""


def _fail(where: str, exc: ValidationError) -> InvalidInput:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    return InvalidInput(f"{where}.{loc}: {err['msg']}" if loc else f"{where}: {err['msg']}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _http_url(v: str) -> str:
    if not re.match(r"^https?://[^\s/]+", v):
        raise ValueError("must be an http:// or https:// URL")
    return v.rstrip("/")


class AnswerConfig(_Strict):
    """Which model answers, and how."""

    model: str = Field("ticket-triage", min_length=1, max_length=100)
    """A ``text-classification`` model (its labels become the answer)."""
    model_version: str | None = None
    priority: Literal["high", "normal", "low"] = "normal"


class TelegramConfig(AnswerConfig):
    """A Telegram bot. The reply goes to ``{api_base}/bot<token>/sendMessage``."""

    api_base: str | None = None
    """Bot API base URL; default ``INFERQ_TELEGRAM_API_BASE`` (the real one)."""
    priority: Literal["high", "normal", "low"] = "high"
    start_text: str = Field(
        "Hi! Send me a support question and I will tell you what it is about and how urgent "
        "it looks.",
        max_length=4096,
    )
    help_text: str = Field(
        "Send me the text of a support request; I answer with its category and urgency. "
        "Commands: /start, /help.",
        max_length=4096,
    )
    unsupported_text: str = Field("I can only read text messages.", max_length=4096)
    failure_text: str = Field("Sorry, I could not classify that message.", max_length=4096)

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v)


class TelegramSecrets(_Strict):
    token: str = Field(pattern=r"^\d+:[A-Za-z0-9_-]+$", max_length=200)
    """The bot token from @BotFather."""
    webhook_secret: str = Field(pattern=r"^[A-Za-z0-9_-]{1,256}$")
    """The ``secret_token`` given to ``setWebhook``; Telegram echoes it in every update."""


class ZendeskConfig(AnswerConfig):
    """A Zendesk account: signed webhooks in, ``PUT /api/v2/tickets/{id}.json`` out."""

    base_url: str
    """``https://<subdomain>.zendesk.com`` (any URL in tests)."""
    email: str = Field(min_length=3, max_length=254)
    """The agent whose API token writes back (basic auth ``{email}/token:{api_token}``)."""
    tag_prefix: str = Field("inferq", pattern=r"^[a-z0-9_]{1,40}$")
    set_priority: bool = True
    priority_map: dict[str, Priority] = Field(default_factory=lambda: dict(URGENCY_TO_PRIORITY))
    """Model urgency -> Zendesk priority."""
    replace_tags: bool = False
    """False: ``additional_tags`` (keeps the ticket's tags); true: ``tags`` (replaces them)."""
    signature_tolerance_s: float = Field(300.0, ge=0)
    """Oldest signature timestamp accepted (replay protection); 0 turns the check off."""

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        return _http_url(v)


class ZendeskSecrets(_Strict):
    signing_secret: str = Field(min_length=1, max_length=500)
    api_token: str = Field(min_length=1, max_length=500)


class WriteBack(_Strict):
    """The call that writes the result back; strings may hold ``{{placeholders}}``."""

    url: str = Field(min_length=8, max_length=2000)
    """e.g. ``https://desk.example.com/api/tickets/{{ticket_id}}``."""
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    body: Any = None
    """A JSON template: a string that is exactly ``{{name}}`` becomes that value (lists and
    numbers kept), other ``{{name}}`` are replaced in text."""
    headers: dict[str, str] = Field(default_factory=dict)
    """May use ``{{secret.<name>}}`` (filled in at send time, never stored in the outbox)."""


class GenericConfig(AnswerConfig):
    """Any help desk: where the id and the text are, how it signs, how to write back."""

    id_field: str = Field(min_length=1, max_length=200)
    """JSON pointer (``/ticket/id``) or dotted path (``ticket.id``) of the ticket id."""
    text_fields: list[str] = Field(min_length=1, max_length=10)
    """Fields joined (blank line between) into the text that is classified."""
    event_field: str | None = None
    """Optional: only payloads whose field here is one of ``event_values`` are triaged."""
    event_values: list[str] = Field(default_factory=list)
    signature_header: str = Field("X-Signature", min_length=1, max_length=100)
    signature_encoding: Literal["hex", "base64"] = "hex"
    signature_prefix: str = Field("", max_length=20)
    """e.g. ``sha256=`` when the header reads ``sha256=<hex>``."""
    timestamp_header: str | None = None
    """When set, the HMAC covers ``<timestamp><body>`` (as Zendesk does)."""
    write_back: WriteBack
    tag_prefix: str = Field("inferq", pattern=r"^[a-z0-9_]{1,40}$")
    priority_map: dict[str, str] = Field(
        default_factory=lambda: dict[str, str](URGENCY_TO_PRIORITY)
    )


class GenericSecrets(BaseModel):
    """``signing_secret`` plus any others the write-back headers name."""

    model_config = ConfigDict(extra="allow")

    signing_secret: str = Field(min_length=1, max_length=500)


CONFIGS: dict[str, tuple[type[AnswerConfig], type[BaseModel]]] = {
    "telegram": (TelegramConfig, TelegramSecrets),
    "zendesk": (ZendeskConfig, ZendeskSecrets),
    "generic": (GenericConfig, GenericSecrets),
}


def validate_config(kind: str, config: dict[str, Any]) -> AnswerConfig:
    """The typed config of ``kind``; ``InvalidInput`` naming the field that is wrong."""
    if kind not in CONFIGS:
        raise InvalidInput(f"kind must be one of {list(KINDS)}, got {kind!r}")
    try:
        return CONFIGS[kind][0].model_validate(config)
    except ValidationError as exc:
        raise _fail("config", exc) from exc


def validate_secrets(kind: str, secrets: dict[str, Any]) -> dict[str, str]:
    """The secrets of ``kind`` as plain strings; ``InvalidInput`` naming a missing or bad one.

    The message never repeats a secret's value.
    """
    if kind not in CONFIGS:
        raise InvalidInput(f"kind must be one of {list(KINDS)}, got {kind!r}")
    bad = sorted(k for k, v in secrets.items() if not isinstance(v, str))
    if bad:
        raise InvalidInput(f"secrets.{bad[0]} must be a string")
    try:
        model = CONFIGS[kind][1].model_validate(secrets)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        reason = "is required" if err["type"] == "missing" else "is not valid"
        if err["type"] == "extra_forbidden":
            reason = "is not a secret of this kind"
        raise InvalidInput(f"secrets.{loc} {reason}") from exc
    return {k: str(v) for k, v in model.model_dump().items() if v is not None}
