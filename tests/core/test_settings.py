from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import build_settings


def test_urls_are_normalised() -> None:
    s = build_settings(database_url="postgres://u@h/db", broker_url="rabbitmq://g:g@h//")
    assert s.database_url == "postgresql+psycopg://u@h/db"
    assert s.broker_url == "amqp://g:g@h//"


def test_default_secret_refused_outside_development() -> None:
    with pytest.raises(ValidationError, match="INFERQ_WEBHOOK_SECRET must be set"):
        build_settings(env="production")
    assert build_settings(env="production", webhook_secret="s3cret").env == "production"


def test_embedded_defaults_need_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("INFERQ_DATABASE_URL", "INFERQ_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    s = build_settings()
    assert s.database_url.startswith("sqlite:///") and s.broker_url.startswith("filesystem://")
    assert not s.auth_enabled


def test_api_keys_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERQ_API_KEYS", '{"k1": "acme"}')
    s = build_settings()
    assert s.auth_enabled and s.api_keys == {"k1": "acme"}
