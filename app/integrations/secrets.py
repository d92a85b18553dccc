"""Integration secrets: encrypted at rest (Fernet), redacted from everything written down.

A Telegram bot token sits in the path of every Bot API URL (``/bot<token>/sendMessage``), so
anything that might print a URL (an httpx log line, an exception) goes through ``redact``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
from collections.abc import Iterable

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.errors import InferqError
from app.integrations.config import IntegrationSettings
from app.settings import Settings

# A Bot API token (``123456789:AA…``), wherever it shows up.
TELEGRAM_TOKEN = re.compile(r"\d{3,}:[A-Za-z0-9_-]{20,}")
MASK = "<redacted>"

_known: set[str] = set()
_known_lock = threading.Lock()


class SecretsUnreadable(InferqError):
    """Stored secrets cannot be decrypted (the key changed and the old one was dropped)."""

    code = "secrets_unreadable"


def _fernet_key(material: str) -> bytes:
    """A Fernet key as given, or one derived from a passphrase."""
    raw = material.strip().encode()
    try:
        if len(base64.urlsafe_b64decode(raw)) == 32:
            return raw
    except ValueError:
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(b"inferq-integrations:" + raw).digest())


class SecretBox:
    """Seals and opens an integration's secrets (a JSON object of strings)."""

    def __init__(self, keys: Iterable[str]) -> None:
        fernets = [Fernet(_fernet_key(k)) for k in keys if k.strip()]
        if not fernets:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet(fernets)

    @classmethod
    def from_settings(cls, settings: Settings, isettings: IntegrationSettings) -> SecretBox:
        keys = [k for k in isettings.secrets_key.split(",") if k.strip()]
        return cls(keys or [settings.webhook_secret])

    def seal(self, secrets: dict[str, str]) -> str:
        return self._fernet.encrypt(orjson.dumps(secrets, option=orjson.OPT_SORT_KEYS)).decode()

    def open(self, token: str) -> dict[str, str]:
        try:
            data: dict[str, str] = orjson.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise SecretsUnreadable(
                "the integration's secrets cannot be decrypted with INFERQ_SECRETS_KEY; "
                "set them again"
            ) from exc
        remember(data.values())
        return data


def remember(values: Iterable[str]) -> None:
    """Have ``redact`` (and the log filter) mask these values from now on."""
    with _known_lock:
        _known.update(v for v in values if len(v) >= 6)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every known secret and anything shaped like a bot token masked."""
    with _known_lock:
        values = sorted(_known | {v for v in extra if len(v) >= 6}, key=len, reverse=True)
    for v in values:
        if v in text:
            text = text.replace(v, MASK)
    return TELEGRAM_TOKEN.sub(MASK, text)


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and extra fields before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        for key, value in list(vars(record).items()):
            if isinstance(value, str) and key not in ("msg", "message") and MASK not in value:
                cleaned = redact(value)
                if cleaned != value:
                    setattr(record, key, cleaned)
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Put the redacting filter where a Bot API URL could be logged (idempotent).

    On the httpx/httpcore loggers (they log request URLs) and on every handler of the root
    logger, which also covers records propagated from any other logger.
    """
    targets: list[logging.Filterer] = [logging.getLogger("httpx"), logging.getLogger("httpcore")]
    targets += logging.getLogger().handlers
    for target in targets:
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)
