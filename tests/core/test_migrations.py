"""Alembic covers every table: upgrade, no drift from the models, downgrade, on a fresh database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, text

from app.db.engine import alembic_config
from app.settings import Settings
from tests.support.services import unique


def test_migrations_match_the_models_and_go_both_ways(postgres_server: str) -> None:
    admin_url = Settings(database_url=postgres_server).database_url
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = unique("inferq_mig_")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{admin_url.rpartition('/')[0]}/{name}"
    try:
        cfg = alembic_config(url)
        command.upgrade(cfg, "head")
        command.check(cfg)  # raises if the models differ from what the migrations built
        assert _compression(url) == {"l"}  # lz4 for the large values (0006)
        command.downgrade(cfg, "0005")
        assert _compression(url) == {""}  # the server default (pglz)
        command.downgrade(cfg, "base")
        command.upgrade(cfg, "head")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _compression(url: str) -> set[str]:
    """How Postgres compresses new values of the large columns (l: lz4, p: pglz)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT attcompression FROM pg_attribute WHERE (attrelid, attname) IN "
                "(('job_chunks'::regclass, 'lines'), ('job_chunks'::regclass, 'results'), "
                "('predictions'::regclass, 'input'), ('predictions'::regclass, 'output'))"
            )
        ).scalars()
        found = {str(r) for r in rows}
    engine.dispose()
    return found


def test_migrations_run_on_the_embedded_sqlite_default(tmp_path: Path) -> None:
    cfg = alembic_config(f"sqlite:///{tmp_path / 'x.db'}")
    command.upgrade(cfg, "head")
    command.check(cfg)
