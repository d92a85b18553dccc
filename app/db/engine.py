"""Engines, sessions and migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


# orjson for JSON columns: outputs (384 floats per embedding) are the bulk of what we store.
JSON_CODEC: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def ensure_sqlite_folder(url: str) -> None:
    """Create the folder of a SQLite file (``var/`` on a fresh clone); SQLite will not."""
    if not url.startswith("sqlite"):
        return
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def make_engine(settings: Settings, *, pool_size: int = 10, async_commit: bool = False) -> Engine:
    """An engine for ``settings.database_url``; SQLite gets WAL and a busy timeout.

    ``async_commit`` (workers) turns off Postgres' wait for the WAL flush at commit. That is
    safe here: a claim or a result lost in a database crash leaves the row under a lease that
    runs out, and the sweeper runs it again. The API keeps synchronous commits: a 202 means the
    request is on disk.
    """
    url = settings.database_url
    if url.startswith("sqlite"):
        ensure_sqlite_folder(url)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **JSON_CODEC
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    connect_args = {"options": "-c synchronous_commit=off"} if async_commit else {}
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
        **JSON_CODEC,
    )


@contextmanager
def one_statement(bind: Engine | sessionmaker[Session]) -> Iterator[Connection]:
    """A pooled connection in autocommit mode, for a single statement that is its own
    transaction (a claim, a read): no BEGIN and COMMIT/ROLLBACK round trips around it."""
    engine = bind if isinstance(bind, Engine) else bind.kw["bind"]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def migrate(database_url: str) -> None:
    """Bring the schema to the newest revision (every head)."""
    from alembic import command

    ensure_sqlite_folder(database_url)
    command.upgrade(alembic_config(database_url), "heads")
