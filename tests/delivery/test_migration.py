"""Migration 0008 moves every webhook and integration delivery (and attempt) into the one outbox
and back, nothing lost, on Postgres and on the embedded SQLite default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, text

from app.db.engine import alembic_config
from app.settings import Settings
from tests.support.services import unique

T0 = "2026-12-01 10:00:00+00:00"

OLD_ROWS = [
    "INSERT INTO integrations (id, tenant, kind, name, enabled, config, secrets, secret_names,"
    " source, created_at, updated_at) VALUES ('itg1', 'acme', 'telegram', 'bot', true, '{}', 'x',"
    f" '[]', 'api', '{T0}', '{T0}')",
    "INSERT INTO integration_events (id, integration_id, tenant, external_id, kind, status, data,"
    f" created_at) VALUES ('ev1', 'itg1', 'acme', '1', 'message', 'done', '{{}}', '{T0}')",
    # a webhook delivered at the second attempt, one given up after a 404, one pending
    "INSERT INTO webhook_deliveries (id, tenant, subject_type, subject_id, url, status,"
    " attempt_count, next_attempt_at, created_at, delivered_at) VALUES"
    f" ('whd1', 'acme', 'prediction', 'p1', 'https://a.example/h', 'delivered', 2, '{T0}',"
    f" '{T0}', '{T0}'),"
    f" ('whd2', 'acme', 'job', 'j1', 'https://a.example/j', 'failed', 1, '{T0}', '{T0}', NULL),"
    f" ('whd3', 'beta', 'prediction', 'p2', 'https://b.example/h', 'pending', 0, '{T0}', '{T0}',"
    " NULL)",
    "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code,"
    f" error) VALUES ('whd1', 1, '{T0}', 3.5, 500, 'receiver answered 500'),"
    f" ('whd1', 2, '{T0}', 2.0, 200, NULL), ('whd2', 1, '{T0}', 1.0, 404, 'receiver answered 404')",
    "INSERT INTO integration_deliveries (id, integration_id, event_id, tenant, action, method,"
    " target, body, status, attempt_count, next_attempt_at, last_error, created_at) VALUES"
    " ('igd1', 'itg1', 'ev1', 'acme', 'reply', 'POST', 'sendMessage', '{\"chat_id\": 5}',"
    f" 'failed', 10, '{T0}', 'answered 502', '{T0}')",
    "INSERT INTO integration_attempts (delivery_id, attempt, started_at, duration_ms, status_code,"
    f" error, retry_after_s) VALUES ('igd1', 10, '{T0}', 9.0, 502, 'answered 502', 3.0)",
]


@pytest.fixture
def pg_fresh(postgres_server: str) -> Iterator[str]:
    admin_url = Settings(database_url=postgres_server).database_url
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = unique("inferq_mig8_")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{admin_url.rpartition('/')[0]}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def rows(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def check_round_trip(url: str) -> None:
    cfg = alembic_config(url)
    command.upgrade(cfg, "0007")
    engine = create_engine(url)
    with engine.begin() as conn:
        for sql in OLD_ROWS:
            conn.execute(text(sql.replace("true", "1") if url.startswith("sqlite") else sql))
    command.upgrade(cfg, "0008")
    got = rows(
        engine,
        "SELECT id, kind, tenant, status, dead_reason, attempt_count, subject_id, integration_id,"
        " target, last_error FROM deliveries ORDER BY id",
    )
    assert got == [
        (
            "igd1",
            "integration",
            "acme",
            "dead",
            "max_attempts",
            10,
            None,
            "itg1",
            "sendMessage",
            "answered 502",
        ),
        ("whd1", "webhook", "acme", "delivered", None, 2, "p1", None, None, None),
        ("whd2", "webhook", "acme", "dead", "rejected", 1, "j1", None, None, None),
        ("whd3", "webhook", "beta", "pending", None, 0, "p2", None, None, None),
    ]
    attempts = rows(
        engine,
        "SELECT delivery_id, attempt, status_code, outcome, retry_after_s FROM delivery_attempts"
        " ORDER BY delivery_id, attempt",
    )
    assert attempts == [
        ("igd1", 10, 502, "failed", 3.0),
        ("whd1", 1, 500, "failed", None),
        ("whd1", 2, 200, "delivered", None),
        ("whd2", 1, 404, "failed", None),
    ]
    command.downgrade(cfg, "0007")
    assert rows(engine, "SELECT id, status, attempt_count FROM webhook_deliveries ORDER BY id") == [
        ("whd1", "delivered", 2),
        ("whd2", "failed", 1),
        ("whd3", "pending", 0),
    ]
    assert rows(engine, "SELECT id, status, last_error FROM integration_deliveries") == [
        ("igd1", "failed", "answered 502")
    ]
    assert rows(engine, "SELECT count(*) FROM webhook_attempts") == [(3,)]
    assert rows(engine, "SELECT delivery_id, retry_after_s FROM integration_attempts") == [
        ("igd1", 3.0)
    ]
    engine.dispose()
    command.upgrade(cfg, "head")


def test_0008_moves_every_delivery_and_attempt_both_ways_on_postgres(pg_fresh: str) -> None:
    check_round_trip(pg_fresh)


def test_0008_moves_every_delivery_and_attempt_both_ways_on_sqlite(tmp_path: Path) -> None:
    check_round_trip(f"sqlite:///{tmp_path / 'x.db'}")
