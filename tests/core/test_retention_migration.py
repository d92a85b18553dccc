"""Migration 0011 (retention) with rows in every table, up and down, on Postgres and SQLite:
old rows get ``created_at`` plus the retention configured where it runs (a tenant's own too),
deliveries theirs from when they became final (none while pending), and nothing is lost."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, MetaData, Table, create_engine, insert, inspect, select, text

from app.db.engine import alembic_config
from app.settings import Settings
from tests.support.services import unique

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of either kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mig.db'}"
        return
    server: str = request.getfixturevalue("postgres_server")
    admin_url = Settings(database_url=server).database_url
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = unique("inferq_ret_")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{admin_url.rpartition('/')[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _rows(engine: Engine) -> None:
    """One row or more in every table 0011 touches, as the 0010 schema has them."""
    md = MetaData()
    t = {n: Table(n, md, autoload_with=engine) for n in _TABLES}
    with engine.begin() as conn:
        base = {"model": "m", "model_version": "1", "priority": 1, "input": {}, "attempts": 0}
        conn.execute(
            insert(t["predictions"]),
            [
                {**base, "id": "p-short", "tenant": "t", "status": "succeeded", "created_at": T0},
                {**base, "id": "p-long", "tenant": "long", "status": "queued", "created_at": T0},
            ],
        )
        zero = dict.fromkeys(
            ("total", "succeeded", "failed", "cancelled", "chunks_total", "chunks_done"), 0
        )
        conn.execute(
            insert(t["jobs"]),
            [
                {
                    **zero,
                    "id": "j1",
                    "tenant": "t",
                    "model": "m",
                    "model_version": "1",
                    "status": "succeeded",
                    "input_format": "jsonl",
                    "sealed": True,
                    "created_at": T0,
                    "updated_at": T0,
                }
            ],
        )
        conn.execute(
            insert(t["job_chunks"]),
            [
                {
                    "job_id": "j1",
                    "seq": 0,
                    "start_index": 0,
                    "n_lines": 1,
                    "status": "done",
                    "lines": b"{}",
                    "succeeded": 1,
                    "failed": 0,
                    "attempts": 1,
                }
            ],
        )
        conn.execute(
            insert(t["integrations"]),
            [
                {
                    "id": "i1",
                    "tenant": "t",
                    "kind": "telegram",
                    "name": "bot",
                    "enabled": True,
                    "config": {},
                    "secrets": "x",
                    "secret_names": [],
                    "source": "api",
                    "created_at": T0,
                    "updated_at": T0,
                }
            ],
        )
        conn.execute(
            insert(t["integration_events"]),
            [
                {
                    "id": "e1",
                    "integration_id": "i1",
                    "tenant": "t",
                    "external_id": "1",
                    "kind": "message",
                    "status": "replied",
                    "data": {},
                    "created_at": T0,
                }
            ],
        )
        d = {
            "kind": "webhook",
            "tenant": "t",
            "replay_base": 0,
            "created_at": T0,
            "next_attempt_at": T0,
            "delivered_at": None,
        }
        conn.execute(
            insert(t["deliveries"]),
            [
                {**d, "id": "d-ok", "status": "delivered", "attempt_count": 1,
                 "delivered_at": T0 + DAY},
                {**d, "id": "d-dead", "status": "dead", "attempt_count": 2},
                {**d, "id": "d-pending", "status": "pending", "attempt_count": 0},
            ],
        )  # fmt: skip
        a = {"duration_ms": 1.0, "outcome": "failed"}
        conn.execute(
            insert(t["delivery_attempts"]),
            [
                {**a, "delivery_id": "d-ok", "attempt": 1, "started_at": T0 + DAY},
                {**a, "delivery_id": "d-dead", "attempt": 1, "started_at": T0 + DAY},
                {**a, "delivery_id": "d-dead", "attempt": 2, "started_at": T0 + 2 * DAY},
            ],
        )


_TABLES = (
    "predictions",
    "jobs",
    "job_chunks",
    "integrations",
    "integration_events",
    "deliveries",
    "delivery_attempts",
)


def _expiries(engine: Engine, table: str) -> dict[str, datetime | None]:
    md = MetaData()
    tbl = Table(table, md, autoload_with=engine)
    with engine.connect() as conn:
        rows = conn.execute(select(tbl.c.id, tbl.c.expires_at)).all()
    return {r[0]: _utc(r[1]) for r in rows}


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite, read without the model's type
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # type: ignore[no-any-return]


def test_0011_backfills_expiries_and_goes_back_with_every_row(
    fresh_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERQ_RETENTION_JOBS_SECONDS", "3600")
    monkeypatch.setenv("INFERQ_TENANT_RETENTION", '{"long": {"predictions": 2592000}}')
    cfg = alembic_config(fresh_url)
    command.upgrade(cfg, "0010")
    engine = create_engine(Settings(database_url=fresh_url).database_url)
    try:
        _rows(engine)
        command.upgrade(cfg, "0011")

        assert _expiries(engine, "predictions") == {
            "p-short": T0 + 7 * DAY,
            "p-long": T0 + 30 * DAY,
        }
        assert _expiries(engine, "jobs") == {"j1": T0 + timedelta(hours=1)}
        assert _expiries(engine, "integration_events") == {"e1": T0 + 7 * DAY}
        assert _expiries(engine, "deliveries") == {
            "d-ok": T0 + DAY + 7 * DAY,  # from delivered_at
            "d-dead": T0 + 2 * DAY + 7 * DAY,  # from its last attempt
            "d-pending": None,  # not final: kept
        }
        insp = inspect(engine)
        for table in ("predictions", "jobs", "integration_events", "deliveries"):
            col = next(c for c in insp.get_columns(table) if c["name"] == "expires_at")
            assert col["nullable"] is (table == "deliveries"), table
            assert f"ix_{table}_expires_at" in {i["name"] for i in insp.get_indexes(table)}

        command.downgrade(cfg, "0010")
        insp = inspect(engine)
        with engine.connect() as conn:
            for table in _TABLES:
                assert "expires_at" not in {c["name"] for c in insp.get_columns(table)}
                n = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                assert n == {"predictions": 2, "deliveries": 3, "delivery_attempts": 3}.get(
                    table, 1
                ), table
        command.upgrade(cfg, "0011")  # and up again over the same rows
        assert _expiries(engine, "jobs") == {"j1": T0 + timedelta(hours=1)}
    finally:
        engine.dispose()
