"""Engines, sessions and migrations."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT_S = 3
"""How long a Postgres connection attempt may take (a host that drops packets would otherwise
hold a request for the kernel's TCP timeout, minutes)."""


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


def make_engine(
    settings: Settings,
    *,
    pool_size: int = 10,
    async_commit: bool = False,
    ping_idle_only: bool = False,
) -> Engine:
    """An engine for ``settings.database_url``; SQLite gets WAL and a busy timeout.

    A pooled Postgres connection is tested (``SELECT 1``) before each use, so that one the
    server ended (a restart, a failover, a proxy's) costs no request; ``ping_idle_only``
    (workers, which retry a claim or a write that failed on a dead connection anyway) tests only
    one that sat idle (``ping_when_idle``), sparing a round trip per claim and per write.

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
    connect_args = session_bounds(settings.db_session_timeout_seconds)
    options = [connect_args.pop("options")]
    if async_commit:
        options.append("-c synchronous_commit=off")
    parsed = make_url(url)
    given = parsed.query.get("options")  # an operator's own options are kept, not replaced
    if given:
        options.insert(0, given if isinstance(given, str) else " ".join(given))
        parsed = parsed.difference_update_query(["options"])
    connect_args["options"] = " ".join(options)
    engine = create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=not ping_idle_only,
        pool_recycle=1800,
        connect_args=connect_args,
        **JSON_CODEC,
    )
    ping_when_idle(engine, PING_IDLE_S if ping_idle_only else None)
    return engine


PING_IDLE_S = 1.0
"""A pooled connection idle longer than this is tested before it is handed out."""


def ping_when_idle(engine: Engine, idle_s: float | None = PING_IDLE_S) -> None:
    """SQLAlchemy's ``pool_pre_ping``, for connections that sat idle: a connection back in the
    pool within ``idle_s`` is handed out as it is, one idle longer answers a ``SELECT 1`` first
    (a dead one is replaced: ``DisconnectionError``). Under load a connection is reused within
    milliseconds, and a ping on every checkout is a round trip per transaction (the API's flushes,
    a worker's claims and writes); a database that restarted was away for longer than
    ``idle_s``, so what its restart killed is found before use, as with ``pool_pre_ping``. Also
    sets psycopg's JSON loader to orjson on each connection (the raw-SQL statements' ``jsonb``
    columns: claimed inputs, returned metadata); ``idle_s`` None: that alone (the engine pings
    every checkout itself)."""
    from psycopg.types.json import set_json_loads
    from sqlalchemy.exc import DisconnectionError

    @event.listens_for(engine, "connect")
    def _connected(dbapi_conn: Any, record: Any) -> None:
        set_json_loads(orjson.loads, dbapi_conn)
        record.info["inferq_idle_since"] = time.monotonic()

    if idle_s is None:
        return

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_conn: Any, record: Any) -> None:
        record.info["inferq_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get("inferq_idle_since", 0.0) <= idle_s:
            return
        try:
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT 1")
            if not dbapi_conn.autocommit:
                dbapi_conn.rollback()
        except Exception as exc:
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc


def session_bounds(timeout_s: float) -> dict[str, Any]:
    """libpq parameters that bound a Postgres session on a network that fails: connects give
    up after ``CONNECT_TIMEOUT_S``; unacknowledged data or a silent peer end the connection
    within ``timeout_s`` on both sides (TCP user timeout, keepalives), and the server ends a
    session left idle inside a transaction after ``timeout_s`` (a worker cut off between its
    result ``UPDATE`` and its ``COMMIT`` would otherwise hold those rows' locks until TCP gives
    up, hours later, and the sweeper could hand none of them on)."""
    ms = max(1000, int(timeout_s * 1000))
    probe = max(1, int(timeout_s / 4))
    server = {
        "idle_in_transaction_session_timeout": ms,
        "tcp_user_timeout": ms,
        "tcp_keepalives_idle": probe,
        "tcp_keepalives_interval": probe,
        "tcp_keepalives_count": 3,
    }
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": probe,
        "keepalives_interval": probe,
        "keepalives_count": 3,
        "tcp_user_timeout": ms,
        "options": " ".join(f"-c {k}={v}" for k, v in server.items()),
    }


@contextmanager
def one_statement(bind: Engine | sessionmaker[Session]) -> Iterator[Connection]:
    """A pooled connection in autocommit mode, for a single statement that is its own
    transaction (a claim, a read): no BEGIN and COMMIT/ROLLBACK round trips around it."""
    engine = bind if isinstance(bind, Engine) else bind.kw["bind"]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


def while_unavailable(fn: Callable[[], T], *, budget_s: float, what: str) -> T:
    """``fn()``, tried again while the database is away (``OperationalError``: a restart, a
    failover, a cut connection) for up to ``budget_s`` seconds, with waits of 0.1 s doubling to
    1 s; then its error. For writes that are safe to repeat (conditional, fenced), whose result
    would otherwise be lost with the process's memory: a worker's results (else they run again
    after the lease), a delivery's outcome (else it is sent again)."""
    deadline = time.monotonic() + budget_s
    wait = 0.1
    while True:
        try:
            return fn()
        except OperationalError as exc:
            if time.monotonic() + wait > deadline:
                raise
            log.warning(
                "database unavailable; trying again",
                extra={"what": what, "retry_in": wait, "error": str(exc).strip()[:200]},
            )
            time.sleep(wait)
            wait = min(wait * 2, 1.0)


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
