"""The egress policy at submit time for schedules, through a real API process: a schedule's
``callback_url`` (each run's job webhook) is refused on create and on PATCH when internal,
however it is spelt, and nothing is stored; a public one is accepted."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.engine import make_engine, make_sessionmaker
from app.db.schedules import Schedule
from app.settings import build_settings
from tests.conftest import Stack, StackFactory
from tests.delivery.test_egress_api import DENIED, KEYS, NOT_HTTP, PUBLIC, error

A = {"Authorization": "Bearer key-a"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tenant A's folder (``INFERQ_DATA_ROOTS``)."""
    return tmp_path_factory.mktemp("tenant-a")


@pytest.fixture(scope="module")
def api_only(module_stacks: StackFactory, redis_url: str, root: Path) -> Stack:
    """An API without workers, API keys on, the default policy (127.0.0.1 allowed)."""
    return module_stacks(
        redis_url, workers=0, api_keys=KEYS, data_roots=json.dumps({"tenant-a": [str(root)]})
    )


@pytest.fixture(scope="module")
def client(api_only: Stack) -> Iterator[httpx.Client]:
    with api_only.client(headers=A) as c:
        yield c


@pytest.fixture(scope="module")
def db(pg_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(build_settings(database_url=pg_url), pool_size=2)
    yield make_sessionmaker(engine)
    engine.dispose()


def body(root: Path, **over: Any) -> dict[str, Any]:
    return {
        "name": f"nightly-{uuid.uuid4().hex[:8]}",
        "cron": "0 2 * * *",
        "model": "churn-risk",
        "source": {"type": "file", "path": str(root / "in" / "*.jsonl")},
        **over,
    }


@pytest.fixture(scope="module")
def existing(client: httpx.Client, root: Path) -> str:
    """A schedule with a public callback, for the PATCH cases."""
    resp = client.post("/v1/schedules", json=body(root, callback_url=PUBLIC))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def snapshot(db: sessionmaker[Session], schedule_id: str) -> Any:
    with db() as s:
        count = s.execute(select(func.count()).select_from(Schedule)).scalar_one()
        row = s.get(Schedule, schedule_id)
        assert row is not None
        return count, row.callback_url, row.updated_at


def check_refused(resp: httpx.Response, url: str, reason: str) -> None:
    if url.startswith(NOT_HTTP):
        message = error(resp, 422, "invalid_input")
        assert message == "callback_url: must be an http(s) URL", message
    else:
        message = error(resp, 422, "egress_denied")
        assert message == f"callback_url {reason}", message


@pytest.mark.parametrize(("url", "reason"), DENIED, ids=[u for u, _ in DENIED])
def test_create_with_an_internal_callback_is_refused(
    client: httpx.Client,
    db: sessionmaker[Session],
    root: Path,
    existing: str,
    url: str,
    reason: str,
) -> None:
    before = snapshot(db, existing)
    check_refused(client.post("/v1/schedules", json=body(root, callback_url=url)), url, reason)
    assert snapshot(db, existing) == before


@pytest.mark.parametrize(("url", "reason"), DENIED, ids=[u for u, _ in DENIED])
def test_patch_to_an_internal_callback_is_refused(
    client: httpx.Client, db: sessionmaker[Session], existing: str, url: str, reason: str
) -> None:
    before = snapshot(db, existing)
    resp = client.patch(f"/v1/schedules/{existing}", json={"callback_url": url})
    check_refused(resp, url, reason)
    assert snapshot(db, existing) == before
    assert client.get(f"/v1/schedules/{existing}").json()["callback_url"] == PUBLIC


def test_a_public_callback_is_accepted(
    client: httpx.Client, db: sessionmaker[Session], root: Path, existing: str
) -> None:
    count = snapshot(db, existing)[0]
    made = client.post("/v1/schedules", json=body(root, callback_url=PUBLIC + "/new"))
    assert made.status_code == 201, made.text
    assert made.json()["callback_url"] == PUBLIC + "/new"
    assert snapshot(db, existing)[0] == count + 1
    patched = client.patch(f"/v1/schedules/{existing}", json={"callback_url": PUBLIC + "/2"})
    assert patched.status_code == 200, patched.text
    assert snapshot(db, existing)[1] == PUBLIC + "/2"
    back = client.patch(f"/v1/schedules/{existing}", json={"callback_url": PUBLIC})
    assert back.status_code == 200, back.text
