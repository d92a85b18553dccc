"""With API keys on, a tenant's schedules touch only what the operator gave it: the cross-tenant
read of issue 10 (a SQL source on inferq's own database) refused when the schedule is made and
when it runs; a registered database scored end to end; files only under the tenant's folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.db.jobs import JobChunk
from app.db.schedules import ScheduleRun
from app.errors import InvalidInput
from app.jobs.lines import split_records
from app.jobs.service import cancel_job
from app.registry import Registry
from app.schedules import service
from app.schedules.config import ScheduleConfig
from app.schedules.runner import Ticker, tick
from app.schedules.specs import ScheduleCreate
from app.settings import Settings
from tests.schedules.conftest import A, B, RecordingPublisher, respell, tenant_settings
from tests.schedules.test_access import Forward

STEAL = "SELECT id AS custom_id, input->>'text' AS text FROM predictions"


def schedule(source: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {"name": "s", "cron": "0 3 * * *", "model": "ticket-triage", "source": source, **over}


def refused(r: Any, message: str) -> None:
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_input"
    assert r.json()["error"]["message"].startswith(message), r.json()


@pytest.fixture
def settings(
    pg_url: str, models_dir: Path, warehouse: str, tenant_dirs: dict[str, Path]
) -> Settings:
    return tenant_settings(pg_url, models_dir, warehouse, tenant_dirs)


def ticker_with(t_settings: Settings, sessions: sessionmaker[Session], models_dir: Path) -> Ticker:
    return Ticker(
        sessions=sessions,
        publisher=RecordingPublisher(),
        registry=Registry(models_dir),
        settings=t_settings,
        cfg=ScheduleConfig(tick_seconds=1, settle_seconds=0),
    )


def run_now(api: TestClient, t: Ticker, sid: str, headers: dict[str, str]) -> dict[str, Any]:
    assert api.post(f"/v1/schedules/{sid}/run", headers=headers).status_code == 202
    tick(t)
    last: dict[str, Any] = api.get(f"/v1/schedules/{sid}/runs", headers=headers).json()["runs"][0]
    return last


def job_inputs(sessions: sessionmaker[Session], job_id: str) -> list[dict[str, Any]]:
    with sessions() as s:
        chunks = s.scalars(select(JobChunk).where(JobChunk.job_id == job_id).order_by(JobChunk.seq))
        return [orjson.loads(r) for c in chunks for r in split_records(c.lines, "jsonl")]


# --- databases -----------------------------------------------------------------------------


def test_the_cross_tenant_read_is_refused_however_the_database_is_named(
    api: TestClient, root_a: Path, pg_url: str
) -> None:
    """Issue 10: tenant B named inferq's own database and read tenant A's predictions."""
    for url in (pg_url, respell(pg_url), pg_url.replace("127.0.0.1", "[::1]")):
        r = api.post("/v1/schedules", json=schedule({"type": "sql", "url": url, "query": STEAL}))
        assert r.status_code == 401
        r = api.post(
            "/v1/schedules",
            json=schedule({"type": "sql", "url": url, "query": STEAL}),
            headers=B,
        )
        refused(r, "source.url: with API keys on, name a connection an operator registered")
    r = api.post("/v1/schedules", json=schedule({"type": "sql", "query": STEAL}), headers=B)
    refused(r, "source.connection: with API keys on, name a connection")
    mistake = {"type": "sql", "connection": "mistake", "query": STEAL}
    r = api.post("/v1/schedules", json=schedule(mistake), headers=B)
    refused(r, "source: connection 'mistake' leads to inferq's own database")
    r = api.post("/v1/schedules", json=schedule(mistake), headers=A)  # registered for B only
    refused(r, "source.connection: no connection named 'mistake' is registered for you")
    sink = {"type": "table", "connection": "mistake", "table": "stolen"}
    in_b = {"type": "file", "path": "in/*.jsonl"}
    r = api.post("/v1/schedules", json=schedule(in_b, sink=sink), headers=B)
    refused(r, "sink: connection 'mistake' leads to inferq's own database")

    s = api.post("/v1/schedules", json=schedule(in_b), headers=B).json()
    for patch, message in [
        ({"source": {"type": "sql", "url": pg_url, "query": STEAL}}, "source.url: with API"),
        ({"source": mistake}, "source: connection 'mistake' leads to inferq's own database"),
        ({"sink": {"type": "table", "url": pg_url, "table": "t"}}, "sink.url: with API keys on"),
    ]:
        refused(api.patch(f"/v1/schedules/{s['id']}", json=patch, headers=B), message)
    assert api.get(f"/v1/schedules/{s['id']}", headers=B).json()["source"]["type"] == "file"


def test_a_registered_database_is_scored_end_to_end(
    api: TestClient,
    root_a: Path,
    warehouse: str,
    settings: Settings,
    pg_sessions: sessionmaker[Session],
    models_dir: Path,
) -> None:
    """Another database on inferq's own server, registered for tenant A: read, scored and the
    results written back there; provenance names the connection, never its URL."""
    query = (
        "SELECT id AS custom_id, body AS text, created_at FROM tickets "
        "WHERE created_at > :watermark ORDER BY created_at"
    )
    source = {
        "type": "sql",
        "connection": "warehouse",
        "query": query,
        "watermark_column": "created_at",
    }
    sink = {"type": "table", "connection": "warehouse", "table": "ticket_scores"}
    r = api.post("/v1/schedules", json=schedule(source, sink=sink), headers=A)
    assert r.status_code == 201, r.text
    t = ticker_with(settings, pg_sessions, models_dir)
    run = run_now(api, t, r.json()["id"], A)
    assert run["status"] == "submitted", run
    assert [x["custom_id"] for x in job_inputs(pg_sessions, run["job_id"])] == ["1", "2", "3"]
    data = run["provenance"]["data"]
    assert (data["connection"], data["rows"]) == ("warehouse", 3)
    assert "url" not in data and warehouse not in orjson.dumps(run["provenance"]).decode()

    cancel_job(sessions=pg_sessions, tenant="tenant-a", job_id=run["job_id"])  # no worker here
    assert tick(t).sinks == 1
    engine = create_engine(warehouse)
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT custom_id, status FROM ticket_scores")).all()
        conn.execute(text("DROP TABLE ticket_scores"))
    engine.dispose()
    assert sorted(rows) == [("1", "failed"), ("2", "failed"), ("3", "failed")]
    runs = api.get(f"/v1/schedules/{r.json()['id']}/runs", headers=A).json()["runs"]
    assert runs[0]["sink"]["status"] == "written"
    assert runs[0]["provenance"]["sink_written"]["connection"] == "warehouse"


def test_a_registration_changed_to_inferqs_own_database_is_refused_at_run_time(
    api: TestClient,
    root_a: Path,
    pg_url: str,
    settings: Settings,
    pg_sessions: sessionmaker[Session],
    models_dir: Path,
) -> None:
    """The schedule was fine when made; then the operator pointed the connection at inferq's
    own database: by its address, or through a port forward that only the server gives away."""
    source = {"type": "sql", "connection": "warehouse", "query": "SELECT body FROM tickets"}
    r = api.post("/v1/schedules", json=schedule(source), headers=A)
    assert r.status_code == 201, r.text
    own = make_url(pg_url)
    fwd = Forward(own.host or "127.0.0.1", own.port or 5432)
    forwarded = own.set(port=fwd.port).render_as_string(hide_password=False)
    try:
        for url, message in [
            (respell(pg_url), "source: connection 'warehouse' leads to inferq's own database"),
            (forwarded, "source: connection 'warehouse' leads to inferq's own database"),
        ]:
            changed = settings.model_copy(
                update={"data_connections": {"tenant-a": {"warehouse": url}}}
            )
            run = run_now(api, ticker_with(changed, pg_sessions, models_dir), r.json()["id"], A)
            assert run["status"] == "failed"
            assert run["error"].startswith(message), run["error"]
            assert "job_id" not in run
    finally:
        fwd.server.close()
    with pg_sessions() as s:
        assert s.scalars(select(ScheduleRun.job_id)).all() == [None, None]


# --- folders -------------------------------------------------------------------------------


def test_files_stay_in_the_tenants_folder(
    api: TestClient,
    root_a: Path,
    tenant_dirs: dict[str, Path],
    settings: Settings,
    pg_sessions: sessionmaker[Session],
    models_dir: Path,
) -> None:
    root_b = tenant_dirs["tenant-b"]
    (root_b / "secret.jsonl").write_text('{"custom_id": "b", "text": "tenant b only"}\n')
    (root_a / "in").mkdir()
    (root_a / "in" / "ok.jsonl").write_text('{"custom_id": "a", "text": "my card"}\n')
    (root_a / "in" / "link.jsonl").symlink_to(root_b / "secret.jsonl")
    (root_a / "b").symlink_to(root_b, target_is_directory=True)
    for path, message in [
        ("../tenant-b/secret.jsonl", "source.path: '../tenant-b/secret.jsonl' may not contain"),
        (str(root_b / "*.jsonl"), f"source.path: '{root_b}/*.jsonl' is outside the folders"),
        ("b/secret.jsonl", "source.path: 'b/secret.jsonl' is outside the folders you may use"),
        ("b/*.jsonl", "source.path: 'b/*.jsonl' is outside the folders you may use"),
        ("in/link.jsonl", "source.path: 'in/link.jsonl' is outside the folders you may use"),
    ]:
        r = api.post("/v1/schedules", json=schedule({"type": "file", "path": path}), headers=A)
        refused(r, message)
    r = api.post(
        "/v1/schedules",
        json=schedule({"type": "file", "path": "in/*.jsonl"}, sink={"type": "file", "path": "b/x"}),
        headers=A,
    )
    refused(r, "sink.path: 'b/x' is outside the folders you may use")

    sink = {"type": "file", "path": "out/{job_id}.jsonl"}
    r = api.post(
        "/v1/schedules", json=schedule({"type": "file", "path": "in/*.jsonl"}, sink=sink), headers=A
    )
    assert r.status_code == 201, r.text
    t = ticker_with(settings, pg_sessions, models_dir)
    run = run_now(api, t, r.json()["id"], A)
    assert run["status"] == "submitted", run
    assert job_inputs(pg_sessions, run["job_id"]) == [{"custom_id": "a", "text": "my card"}]
    assert run["provenance"]["data"]["refused"] == [str(root_a / "in" / "link.jsonl")]
    (root_a / "out").symlink_to(root_b, target_is_directory=True)  # planted after the check
    cancel_job(sessions=pg_sessions, tenant="tenant-a", job_id=run["job_id"])
    tick(t)
    done = api.get(f"/v1/schedules/{r.json()['id']}/runs", headers=A).json()["runs"][0]
    assert done["sink"]["status"] == "failed"
    assert "is outside the folders you may use" in done["sink"]["error"]
    assert os.listdir(root_b) == ["secret.jsonl"]

    (root_a / "in" / "ok.jsonl").unlink()
    run = run_now(api, t, r.json()["id"], A)
    assert (run["status"], run["error"]) == (
        "skipped",
        "no file matches in/*.jsonl (1 lead out of your folders, not read)",
    )


def test_a_watched_folder_takes_in_no_symlink_out(
    api: TestClient,
    root_a: Path,
    tenant_dirs: dict[str, Path],
    settings: Settings,
    pg_sessions: sessionmaker[Session],
    models_dir: Path,
) -> None:
    secret = tenant_dirs["tenant-b"] / "secret.jsonl"
    secret.write_text('{"text": "tenant b only"}\n')
    (root_a / "inbox").mkdir()
    source = {"type": "file", "path": "inbox/*.jsonl", "watch": True}
    r = api.post("/v1/schedules", json=schedule(source, cron=None), headers=A)
    assert r.status_code == 201, r.text
    (root_a / "inbox" / "link.jsonl").symlink_to(secret)
    t = ticker_with(settings, pg_sessions, models_dir)
    assert tick(t).files == 0
    (root_a / "inbox" / "mine.jsonl").write_text('{"text": "refund"}\n')
    assert tick(t).files == 1


def test_a_tenant_without_folders_may_use_none(
    pg_url: str, models_dir: Path, warehouse: str, pg_sessions: sessionmaker[Session]
) -> None:
    no_dirs = tenant_settings(pg_url, models_dir, warehouse, {})
    with pytest.raises(InvalidInput, match="no folders are registered for you"):
        service.create_schedule(
            sessions=pg_sessions,
            registry=Registry(models_dir),
            settings=no_dirs,
            tenant="tenant-a",
            body=ScheduleCreate.model_validate(schedule({"type": "file", "path": "in/*.jsonl"})),
            cfg=ScheduleConfig(),  # INFERQ_SOURCE_ROOTS "*" counts only with API keys off
        )
