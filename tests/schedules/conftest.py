"""Fixtures of the schedules tests: an in-process API, a tick on real Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.registry import Registry
from app.schedules.config import ScheduleConfig
from app.schedules.runner import Ticker
from app.settings import build_settings

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
def api_client(pg_url: str, models_dir: Path) -> Iterator[TestClient]:
    from api.main import create_app

    settings = build_settings(
        database_url=pg_url, models_dir=models_dir, api_keys=KEYS, log_json=False
    )
    with TestClient(create_app(settings, publisher=RecordingPublisher())) as client:
        yield client


@pytest.fixture
def api(api_client: TestClient, pg_sessions: sessionmaker[Session], roots: Path) -> TestClient:
    """The API in this process (auth on: tenants ``tenant-a`` and ``tenant-b``), on emptied
    tables."""
    return api_client


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
