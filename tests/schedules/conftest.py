"""Fixtures of the schedules tests: an in-process API, a tick on real Postgres, a second
database on the same server that an operator registered for tenant A."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from app.registry import Registry
from app.schedules.config import ScheduleConfig
from app.schedules.runner import Ticker
from app.settings import Settings, build_settings

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}


class RecordingPublisher:
    """Publishes nothing; records what would have gone to the broker."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, str, int]] = []

    def publish(self, model: str, ids: Any, priority: int) -> None:
        pass

    def publish_job_chunk(self, model: str, job_id: str, seq: int) -> None:
        self.chunks.append((model, job_id, seq))

    def check(self) -> None:
        pass


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The only folder sources and sinks may use (``INFERQ_SOURCE_ROOTS``)."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("INFERQ_SOURCE_ROOTS", str(root))
    return root


@pytest.fixture(scope="module")
def warehouse(pg_url: str) -> Iterator[str]:
    """Another database on inferq's own server (allowed: not inferq's database), with a
    ``tickets`` table of three rows."""
    name = f"inferq_wh_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE tickets (id int, body text, created_at timestamptz)"))
        conn.execute(
            text(
                "INSERT INTO tickets SELECT i, 'ticket ' || i || ': the app crashes',"
                " now() + make_interval(secs => i) FROM generate_series(1, 3) AS i"
            )
        )
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def tenant_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tenant's folder (``INFERQ_DATA_ROOTS`` of the API)."""
    base = tmp_path_factory.mktemp("tenants")
    return {tenant: base / tenant for tenant in KEYS.values()}


def respell(url: str) -> str:
    """The same database: ``postgres://``, ``localhost`` for 127.0.0.1, no port."""
    u = make_url(url)
    host = "localhost" if u.host in ("127.0.0.1", "::1") else u.host
    auth = u.username + (f":{u.password}" if u.password else "") + "@" if u.username else ""
    port = "" if u.port in (None, 5432) else f":{u.port}"
    return f"postgres://{auth}{host}{port}/{u.database}"


def tenant_settings(
    pg_url: str, models_dir: Path, warehouse: str, dirs: dict[str, Path], **over: Any
) -> Settings:
    """Auth on; tenant A may use the warehouse, tenant B (an operator's mistake) inferq's own
    database spelt another way; each tenant has its own folder."""
    return build_settings(
        database_url=pg_url,
        models_dir=models_dir,
        api_keys=KEYS,
        log_json=False,
        data_connections={
            "tenant-a": {"warehouse": warehouse},
            "tenant-b": {"mistake": respell(pg_url)},
        },
        data_roots={tenant: [d] for tenant, d in dirs.items()},
        **over,
    )


@pytest.fixture(scope="module")
def api_client(
    pg_url: str, models_dir: Path, warehouse: str, tenant_dirs: dict[str, Path]
) -> Iterator[TestClient]:
    from api.main import create_app

    settings = tenant_settings(pg_url, models_dir, warehouse, tenant_dirs)
    with TestClient(create_app(settings, publisher=RecordingPublisher())) as client:
        yield client


@pytest.fixture
def api(
    api_client: TestClient, pg_sessions: sessionmaker[Session], tenant_dirs: dict[str, Path]
) -> TestClient:
    """The API in this process (auth on: tenants ``tenant-a`` and ``tenant-b``), on emptied
    tables and emptied tenant folders."""
    for folder in tenant_dirs.values():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    return api_client


@pytest.fixture
def root_a(api: TestClient, tenant_dirs: dict[str, Path]) -> Path:
    """Tenant A's folder, empty."""
    return tenant_dirs["tenant-a"]


@pytest.fixture
def ticker(
    pg_url: str, pg_sessions: sessionmaker[Session], models_dir: Path, roots: Path
) -> Ticker:
    """A tick's dependencies on the test database; chunks are recorded, not run."""
    return Ticker(
        sessions=pg_sessions,
        publisher=RecordingPublisher(),
        registry=Registry(models_dir),
        settings=build_settings(database_url=pg_url, models_dir=models_dir),
        cfg=ScheduleConfig(tick_seconds=1, source_roots=(roots,), settle_seconds=0),
    )
