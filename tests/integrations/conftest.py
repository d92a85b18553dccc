"""One API + worker stack shared by the integration tests (started once: it is the slow part).

Every test still starts from empty tables (``pg_sessions``) and gets its own loopback
``receiver`` standing in for the Bot API or the help desk. After each test, no process log
may contain a bot token or an API token.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.deliveries import Delivery
from app.db.integrations import IntegrationEvent
from app.db.models import Prediction
from tests.conftest import Stack, _purge_queues
from tests.support.services import unique

TOKEN = "7311592024:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawq"
WEBHOOK_SECRET = "tg-hook-secret_0123"
API_TOKEN = "zd-api-token-9f8e7d6c5b4a"
SIGNING_SECRET = "zd-signing-secret-abcdef"
KEYS = {"key-acme": "acme", "key-globex": "globex"}
NEVER_IN_LOGS = (TOKEN, API_TOKEN, SIGNING_SECRET, WEBHOOK_SECRET)


@pytest.fixture(scope="package")
def hook_stack(
    pg_url: str, redis_url: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """API + one worker, with short write-back backoff (0.2 s doubling) and API keys on."""
    import orjson

    tmp = tmp_path_factory.mktemp("hooks")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    env.update(
        {
            "INFERQ_DATABASE_URL": pg_url,
            "INFERQ_BROKER_URL": redis_url,
            "INFERQ_MODELS_DIR": str(models_dir),
            "INFERQ_QUEUE_PREFIX": unique("hk"),
            "INFERQ_LOG_JSON": "true",
            "INFERQ_LOG_LEVEL": "DEBUG",
            "INFERQ_API_KEYS": orjson.dumps(KEYS).decode(),
            "INFERQ_SECRETS_KEY": "integration tests passphrase",
            "INFERQ_INTEGRATION_BACKOFF_BASE_SECONDS": "0.2",
            "INFERQ_INTEGRATION_MAX_ATTEMPTS": "6",
            "INFERQ_INTEGRATION_TIMEOUT_SECONDS": "3",
            "INFERQ_EGRESS_ALLOW": "127.0.0.1",  # the fake Bot API and help desks
            "PYTHONUNBUFFERED": "1",
        }
    )
    models = sorted({p.parent.parent.name for p in models_dir.glob("*/*/manifest.json")})
    stack = Stack(env, tmp, models)
    try:
        stack.start_worker("worker0", concurrency=8)
        stack.start_api()
        yield stack
    finally:
        stack.stop()
        _purge_queues(stack)


@dataclass
class Hooks:
    """What a test needs: the stack, an API client for tenant ``acme``, the database."""

    stack: Stack
    client: httpx.Client
    sessions: sessionmaker[Session]

    def create(self, **body: Any) -> dict[str, Any]:
        resp = self.client.post("/v1/integrations", json=body)
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def detail(self, integration_id: str) -> dict[str, Any]:
        resp = self.client.get(f"/v1/integrations/{integration_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def counts(self) -> tuple[int, int, int]:
        """(events, predictions, deliveries) in the database."""
        with self.sessions() as s:
            return tuple(  # type: ignore[return-value]
                s.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (IntegrationEvent, Prediction, Delivery)
            )

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.stack.tmp.glob("*.log"))


@pytest.fixture
def hooks(hook_stack: Stack, pg_sessions: sessionmaker[Session]) -> Iterator[Hooks]:
    with hook_stack.client(headers={"Authorization": "Bearer key-acme"}) as client:
        yield Hooks(hook_stack, client, pg_sessions)
    logs = Hooks(hook_stack, client, pg_sessions).logs()
    leaked = [i for i, secret in enumerate(NEVER_IN_LOGS) if secret in logs]
    assert not leaked, f"secret(s) {leaked} of NEVER_IN_LOGS found in the process logs"
