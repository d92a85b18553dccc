"""``/v1/schedules``: create, read, change, delete, run now; every bad input's error body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.schedules.conftest import A, B


def body(roots: Path, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "nightly tickets",
        "cron": "0 2 * * *",
        "timezone": "Europe/Berlin",
        "model": "ticket-triage",
        "source": {"type": "file", "path": str(roots / "in" / "*.jsonl")},
    }
    base.update(over)
    return base


def test_create_read_list_patch_delete(api: TestClient, root_a: Path) -> None:
    r = api.post(
        "/v1/schedules",
        json=body(root_a, sink={"type": "file", "path": "out/{job_id}.jsonl"}),
        headers=A,
    )
    assert r.status_code == 201, r.text
    s = r.json()
    assert r.headers["location"] == f"/v1/schedules/{s['id']}"
    assert s["name"] == "nightly tickets"
    assert s["enabled"] is True
    assert s["next_run_at"].endswith(("T00:00:00Z", "T01:00:00Z"))  # 02:00 Berlin in UTC
    assert s["sink"] == {"type": "file", "path": "out/{job_id}.jsonl"}
    assert s["source"] == {"type": "file", "path": str(root_a / "in" / "*.jsonl"), "watch": False}

    assert api.get(f"/v1/schedules/{s['id']}", headers=A).json() == s
    assert [x["id"] for x in api.get("/v1/schedules", headers=A).json()["schedules"]] == [s["id"]]

    r = api.patch(f"/v1/schedules/{s['id']}", json={"enabled": False}, headers=A)
    assert r.status_code == 200
    assert r.json()["enabled"] is False
    assert r.json()["next_run_at"] is None

    r = api.patch(
        f"/v1/schedules/{s['id']}", json={"enabled": True, "cron": "*/15 * * * *"}, headers=A
    )
    assert r.json()["cron"] == "*/15 * * * *"
    assert r.json()["next_run_at"][14:16] in ("00", "15", "30", "45")

    r = api.delete(f"/v1/schedules/{s['id']}", headers=A)
    assert r.status_code == 200
    assert api.get(f"/v1/schedules/{s['id']}", headers=A).status_code == 404


def test_run_now_queues_a_manual_run(api: TestClient, root_a: Path) -> None:
    s = api.post("/v1/schedules", json=body(root_a, enabled=False), headers=A).json()
    r = api.post(f"/v1/schedules/{s['id']}/run", headers=A)
    assert r.status_code == 202
    run = r.json()
    assert run["trigger"] == "manual"
    assert run["status"] == "pending"
    runs = api.get(f"/v1/schedules/{s['id']}/runs", headers=A).json()["runs"]
    assert [x["id"] for x in runs] == [run["id"]]


def test_another_tenants_schedule_is_not_found(api: TestClient, root_a: Path) -> None:
    s = api.post("/v1/schedules", json=body(root_a), headers=A).json()
    missing = {"error": {"code": "not_found", "message": f"schedule {s['id']} not found"}}
    for method, path, payload in [
        ("GET", f"/v1/schedules/{s['id']}", None),
        ("PATCH", f"/v1/schedules/{s['id']}", {"enabled": False}),
        ("DELETE", f"/v1/schedules/{s['id']}", None),
        ("POST", f"/v1/schedules/{s['id']}/run", None),
        ("GET", f"/v1/schedules/{s['id']}/runs", None),
    ]:
        r = api.request(method, path, json=payload, headers=B)
        assert (r.status_code, r.json()) == (404, missing), (method, path)
    assert api.get("/v1/schedules", headers=B).json() == {"schedules": []}
    assert api.get(f"/v1/schedules/{s['id']}", headers=A).json()["enabled"] is True
    assert api.get("/v1/schedules").status_code == 401


def test_a_name_is_unique_per_tenant(api: TestClient, root_a: Path) -> None:
    assert api.post("/v1/schedules", json=body(root_a), headers=A).status_code == 201
    r = api.post("/v1/schedules", json=body(root_a), headers=A)
    assert r.status_code == 409
    assert r.json() == {
        "error": {"code": "name_taken", "message": "a schedule named 'nightly tickets' exists"}
    }
    in_b = {"type": "file", "path": "in/*.jsonl"}  # under B's own folder
    assert api.post("/v1/schedules", json=body(root_a, source=in_b), headers=B).status_code == 201


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("bad cron", {"cron": "61 * * * *"}, "cron: '61 * * * *' is not a valid cron expression"),
    ("seconds field", {"cron": "* * * * * *"}, "cron: '* * * * * *' must have five fields"),
    ("never fires", {"cron": "0 0 31 2 *"}, "cron: '0 0 31 2 *' never fires"),
    (
        "no cron",
        {"cron": None},
        "cron: required (only a schedule that watches for files may omit it)",
    ),
    (
        "unknown timezone",
        {"timezone": "Mars/Olympus"},
        "timezone: unknown time zone 'Mars/Olympus'",
    ),
    ("unknown model", {"model": "gpt-17"}, "unknown model 'gpt-17'"),
    ("unknown source type", {"source": {"type": "ftp", "path": "x"}}, "source: Input tag 'ftp'"),
    ("source without path", {"source": {"type": "file"}}, "source.file.path: Field required"),
    (
        "unknown source field",
        {"source": {"type": "file", "path": "a.jsonl", "glob": 1}},
        "source.file.glob: Extra inputs are not permitted",
    ),
    (
        "path outside roots",
        {"source": {"type": "file", "path": "/etc/*.jsonl"}},
        "source.path: '/etc/*.jsonl' is outside the folders you may use",
    ),
    (
        "format unknown",
        {"source": {"type": "file", "path": "in/*"}},
        "source.format: cannot tell the format of 'in/*'",
    ),
    (
        "sql not a select",
        {"source": {"type": "sql", "query": "DELETE FROM predictions"}},
        "source.query: must be one SELECT",
    ),
    (
        "sql unknown table",
        {"source": {"type": "sql", "query": "SELECT text FROM nope"}},
        'source.query: the database refused it: relation "nope" does not exist',
    ),
    (
        "watermark missing from query",
        {
            "source": {
                "type": "sql",
                "query": "SELECT id AS custom_id FROM tickets",
                "watermark_column": "created_at",
            }
        },
        "source.query: filter on :watermark when watermark_column is set",
    ),
    (
        "watermark not returned",
        {
            "source": {
                "type": "sql",
                "query": "SELECT body AS text FROM tickets WHERE created_at > :watermark",
                "watermark_column": "created_at",
            }
        },
        "source.query: must return the watermark column 'created_at' (it returns text)",
    ),
    (
        ":watermark without column",
        {
            "source": {
                "type": "sql",
                "query": "SELECT body AS text FROM tickets WHERE created_at > :watermark",
            }
        },
        "source.watermark_column: required when the query uses :watermark",
    ),
    (
        "sink with a url",
        {"sink": {"type": "table", "table": "scores", "url": "sqlite:///x.db"}},
        "sink.url: with API keys on, name a connection",
    ),
    (
        "source with a url and a connection",
        {"source": {"type": "sql", "query": "SELECT 1", "url": "sqlite://", "connection": "x"}},
        "source.sql: Value error, give connection or url, not both",
    ),
    (
        "unknown connection",
        {"source": {"type": "sql", "query": "SELECT 1", "connection": "elsewhere"}},
        "source.connection: no connection named 'elsewhere' is registered for you",
    ),
    (
        "sink table name",
        {"sink": {"type": "table", "table": "x; drop"}},
        "sink.table.table: String should match pattern",
    ),
    (
        "sink outside roots",
        {"sink": {"type": "file", "path": "/tmp/out.jsonl"}},
        "sink.path: '/tmp/out.jsonl' is outside the folders you may use",
    ),
    (
        "sink placeholder",
        {"sink": {"type": "file", "path": "out/{nope}.jsonl"}},
        "sink.path: unknown placeholder {nope}",
    ),
    ("callback not http", {"callback_url": "ftp://x"}, "callback_url: must be an http(s) URL"),
    ("extra field", {"cronn": "* * * * *"}, "cronn: Extra inputs are not permitted"),
    ("empty name", {"name": ""}, "name: String should have at least 1 character"),
    ("enabled not bool", {"enabled": "maybe"}, "enabled: Input should be a valid boolean"),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD, ids=[c[0] for c in BAD])
def test_bad_schedule_is_422_with_a_message(
    api: TestClient, root_a: Path, case: str, change: dict[str, Any], message: str
) -> None:
    change = {**change}
    for key in ("source", "sink"):  # with API keys on, SQL sources and table sinks name a
        part = change.get(key)  # connection the operator registered
        if isinstance(part, dict) and part.get("type") in ("sql", "table") and "url" not in part:
            change[key] = {"connection": "warehouse", **part}
    r = api.post("/v1/schedules", json=body(root_a, **change), headers=A)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] in ("invalid_input", "unknown_model")
    assert err["message"].startswith(message), err["message"]
    assert api.get("/v1/schedules", headers=A).json() == {"schedules": []}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"source": {"type": "sql", "query": "SELECT name AS text FROM schedules"}},
            "source.connection: with API keys on, name a connection an operator registered",
        ),
        (
            {"sink": {"type": "table", "table": "scores"}},
            "sink.connection: with API keys on, name a connection an operator registered",
        ),
    ],
)
def test_with_api_keys_no_tenant_query_runs_on_inferqs_own_database(
    api: TestClient, root_a: Path, change: dict[str, Any], message: str
) -> None:
    r = api.post("/v1/schedules", json=body(root_a, **change), headers=A)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith(message)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "the body must be a JSON object"),
        (b"{nope", "the body is not valid JSON"),
        (b"[1]", "the body must be a JSON object"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_422(api: TestClient, raw: bytes, message: str) -> None:
    r = api.post("/v1/schedules", content=raw, headers={**A, "content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["message"].startswith(message)


def test_a_bad_patch_changes_nothing(api: TestClient, root_a: Path) -> None:
    s = api.post("/v1/schedules", json=body(root_a), headers=A).json()
    for patch, message in [
        ({"cron": "nope"}, "cron: 'nope' must have five fields"),
        ({"name": None}, "name: must not be null"),
        (
            {"source": {"type": "sql", "connection": "warehouse", "query": "UPDATE x SET y = 1"}},
            "source.query: must be one SELECT",
        ),
        ({"timezone": "Nowhere"}, "timezone: unknown time zone 'Nowhere'"),
    ]:
        r = api.patch(f"/v1/schedules/{s['id']}", json=patch, headers=A)
        assert r.status_code == 422, patch
        assert r.json()["error"]["message"].startswith(message), r.json()
    assert api.get(f"/v1/schedules/{s['id']}", headers=A).json() == s


def test_a_schedule_can_be_paused_while_its_source_database_is_down(
    api: TestClient, root_a: Path, warehouse: str
) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(warehouse)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE api_src (body text)"))
    source = {"type": "sql", "connection": "warehouse", "query": "SELECT body AS text FROM api_src"}
    s = api.post("/v1/schedules", json=body(root_a, source=source), headers=A).json()
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE api_src"))
    engine.dispose()
    r = api.patch(f"/v1/schedules/{s['id']}", json={"enabled": False}, headers=A)
    assert r.status_code == 200, r.text
    r = api.patch(f"/v1/schedules/{s['id']}", json={"source": source}, headers=A)
    assert r.status_code == 422
    assert r.json()["error"]["message"].startswith(
        'source.query: the database refused it: relation "api_src" does not exist'
    )


def test_a_watching_schedule_needs_no_cron(api: TestClient, root_a: Path) -> None:
    r = api.post(
        "/v1/schedules",
        json=body(root_a, cron=None, source={"type": "file", "path": "inbox/*.csv", "watch": True}),
        headers=A,
    )
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["cron"] is None
    assert s["next_run_at"] is None
    assert s["source"]["watch"] is True
