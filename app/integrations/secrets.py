"""Integration secrets: encrypted at rest (Fernet), redacted from everything written down.

A Telegram bot token sits in the path of every Bot API URL (``/bot<token>/sendMessage``), so
anything that might print a URL (an httpx log line, an exception) goes through ``redact``.

Keys. Each entry of ``INFERQ_SECRETS_KEY`` (or, when it is empty, ``INFERQ_WEBHOOK_SECRET``) is
either a Fernet key given verbatim (32 bytes, url-safe base64), used as it is, or a passphrase,
from which a Fernet key is derived with scrypt (see ``derive_key``). Ciphertexts sealed before
scrypt came in used one SHA-256 of the passphrase; that key is kept for opening only, so they
still open, and every seal uses the scrypt key (``SecretBox.rotate`` re-seals an old one).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
from collections.abc import Iterable
from functools import lru_cache

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


# scrypt's cost: n=2**14, r=8, p=1 needs 128 * r * n = 16 MiB and takes ~60-85 ms on one core
# of the 2-core dev VMs; a key is derived once per process per passphrase (cached below).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 32 << 20  # room for the 16 MiB above (OpenSSL refuses anything over maxmem)
# One fixed salt per purpose (see ``derive_key``); "v2" names the key generation after SHA-256.
SECRETS_SALT = b"inferq/integration-secrets/scrypt/v2"
_LEGACY_PREFIX = b"inferq-integrations:"


def verbatim_key(material: str) -> bytes | None:
    """``material`` as a Fernet key if it is one (32 bytes in url-safe base64), else None."""
    raw = material.strip().encode()
    try:
        if len(base64.urlsafe_b64decode(raw)) == 32:
            return raw
    except ValueError:
        pass
    return None


@lru_cache(maxsize=64)
def derive_key(passphrase: str, salt: bytes = SECRETS_SALT) -> bytes:
    """The Fernet key derived from a passphrase with scrypt (n=2**14, r=8, p=1).

    The salt is fixed and public, one per purpose (``SECRETS_SALT`` for integration secrets),
    not random per ciphertext: every process (API, worker, CLI) must derive the same key from
    the configured passphrase with nothing stored beside it, so the derivation has to be
    deterministic. The price: one passphrase gives one key in every inferq installation, so a
    guesser can attack all of them with one precomputation; an inferq-specific salt only keeps
    tables built for other uses of scrypt out. What protects a passphrase is scrypt's cost per
    guess (memory-hard: 16 MiB each); a long random passphrase, or a verbatim Fernet key (which
    skips the derivation), is what keeps a determined guesser out.

    Cached: derived once per process per passphrase (and salt).
    """
    digest = hashlib.scrypt(
        passphrase.strip().encode(),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=SCRYPT_MAXMEM,
        dklen=32,
    )
    return base64.urlsafe_b64encode(digest)


def legacy_key(passphrase: str) -> bytes:
    """The key a passphrase gave before scrypt: one SHA-256. Only ever used to open."""
    raw = passphrase.strip().encode()
    return base64.urlsafe_b64encode(hashlib.sha256(_LEGACY_PREFIX + raw).digest())


def _fernet_keys(material: str) -> tuple[list[bytes], list[bytes]]:
    """(keys that seal and open, keys that only open) for one configured key or passphrase."""
    key = verbatim_key(material)
    if key is not None:
        return [key], []
    return [derive_key(material)], [legacy_key(material)]


class SecretBox:
    """Seals and opens an integration's secrets (a JSON object of strings)."""

    def __init__(self, keys: Iterable[str]) -> None:
        """``keys``: Fernet keys or passphrases, the first seals, all open (rotation).

        The MultiFernet holds every key's current form first (the first entry's seals), then
        the legacy SHA-256 keys of the passphrases, which only ever open what was sealed with
        them before.
        """
        current: list[bytes] = []
        legacy: list[bytes] = []
        for k in keys:
            if k.strip():
                keep, old = _fernet_keys(k)
                current += keep
                legacy += old
        if not current:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(k) for k in current + legacy])

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

    def rotate(self, token: str) -> str:
        """``token`` sealed again with the current key (e.g. one sealed with a legacy key)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretsUnreadable(
                "the integration's secrets cannot be decrypted with INFERQ_SECRETS_KEY; "
                "set them again"
            ) from exc


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
