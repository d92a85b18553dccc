"""Retention through the API (in this process, real Postgres): ``expires_at`` on predictions,
jobs and deliveries, ``ttl_s`` per request within the (per-tenant) cap, and a clean 404 that
says how long things are kept once an object is expired, before the purge and after it (files
and batches of the OpenAI-compatible API too, in OpenAI's words)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.batches import Batch
from app.db.engine import session_scope
from app.db.files import File, FilePart
from app.db.jobs import Job, JobChunk
from app.db.models import Prediction
from app.delivery import outbox
from app.openai_compat import files
from app.purge import purge
from app.settings import Settings, build_settings

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
CHURN = {"model": "churn-risk", "input": {"features": [0.5] * 12}}
ROW = {"features": [0.5] * 12}
WEEK = timedelta(days=7)
PAST = utcnow() - timedelta(days=1)


class NoBroker:
    def publish(self, model: str, ids: Any, priority: int) -> None:
        pass

    def publish_job_chunk(self, model: str, job_id: str, seq: int) -> None:
        pass

    def check(self) -> None:
        pass


@pytest.fixture(scope="module")
def settings(pg_url: str, models_dir: Path) -> Settings:
    return build_settings(
        database_url=pg_url,
        models_dir=models_dir,
        log_json=False,
        api_keys={"key-a": "tenant-a", "key-b": "tenant-b"},
        tenant_retention={"tenant-b": {"predictions": 3600, "jobs": 7200, "max_ttl": 120}},
    )


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app(settings, publisher=NoBroker())) as c:
        yield c


@pytest.fixture
def api(client: TestClient, pg_sessions: sessionmaker[Session]) -> TestClient:
    """The API on emptied tables."""
    return client


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def lifetime(body: dict[str, Any]) -> timedelta:
    return ts(body["expires_at"]) - ts(body["created_at"])


def error(resp: Any, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code, resp.text
    return str(resp.json()["error"]["message"])


def count(sessions: sessionmaker[Session], table: Any) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def test_predictions_keep_the_tenants_retention_or_the_requests_ttl_within_the_cap(
    api: TestClient, pg_sessions: sessionmaker[Session]
) -> None:
    def shown(pid: str, headers: dict[str, str]) -> dict[str, Any]:
        return api.get(f"/v1/predictions/{pid}", headers=headers).json()  # type: ignore[no-any-return]

    plain = api.post("/v1/predictions", json=CHURN, headers=A)
    assert plain.status_code == 202, plain.text
    assert lifetime(shown(plain.json()["id"], A)) == WEEK
    short = api.post("/v1/predictions", json={**CHURN, "ttl_s": 60}, headers=A).json()
    assert lifetime(shown(short["id"], A)) == timedelta(seconds=60)
    many = api.post(
        "/v1/predictions", json={"model": "churn-risk", "inputs": [ROW, ROW]}, headers=B
    ).json()["predictions"]
    assert [lifetime(shown(p["id"], B)) for p in many] == [timedelta(hours=1)] * 2  # its own
    assert count(pg_sessions, Prediction) == 4

    msg = error(api.post("/v1/predictions", json={**CHURN, "ttl_s": 121}, headers=B), 422,
                "ttl_too_long")  # fmt: skip
    assert "(0, 120]" in msg and "2 minutes" in msg
    msg = error(
        api.post("/v1/predictions", json={**CHURN, "ttl_s": 30 * 86_400 + 1}, headers=A),
        422,
        "ttl_too_long",
    )
    assert "30 days" in msg
    error(api.post("/v1/predictions", json={**CHURN, "ttl_s": 0}, headers=A), 422,
          "invalid_input")  # fmt: skip
    assert count(pg_sessions, Prediction) == 4  # nothing of a refused request is stored


def test_an_expired_prediction_is_a_404_that_says_how_long_before_and_after_the_purge(
    api: TestClient, pg_sessions: sessionmaker[Session], settings: Settings
) -> None:
    ids = [api.post("/v1/predictions", json=CHURN, headers=h).json()["id"] for h in (A, A, B)]
    done_a, live_a, done_b = ids
    with session_scope(pg_sessions) as s:
        s.execute(update(Prediction).values(expires_at=PAST))
        s.execute(
            update(Prediction)
            .where(Prediction.id.in_([done_a, done_b]))
            .values(status="succeeded", output={"risk": 0.2}, completed_at=utcnow())
        )
    for when in ("before", "after"):
        msg = error(api.get(f"/v1/predictions/{done_a}", headers=A), 404, "not_found")
        assert msg == (
            f"prediction {done_a} not found (predictions are kept for 7 days after they are "
            "created, unless the request set ttl_s)"
        ), when
        error(api.get(f"/v1/predictions/{done_a}?wait=1", headers=A), 404, "not_found")
        error(api.delete(f"/v1/predictions/{done_a}", headers=A), 404, "not_found")
        assert "kept for 1 hour" in error(
            api.get(f"/v1/predictions/{done_b}", headers=B), 404, "not_found"
        )
        # a queued one past its expiry is kept, and shown, until it is final
        live = api.get(f"/v1/predictions/{live_a}", headers=A)
        assert live.status_code == 200 and live.json()["status"] == "queued"
        if when == "before":
            report = purge(engine=pg_sessions.kw["bind"], settings=settings)
            assert report.deleted["predictions"] == 2
    # never a 404 that tells one tenant about another's objects: the same words as unknown ids
    assert "not found (predictions are kept" in error(
        api.get(f"/v1/predictions/{live_a}", headers=B), 404, "not_found"
    )


def _multipart(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    """A form in the order given: (name, value, filename or None)."""
    boundary = "retention-boundary"
    body = b""
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_a_job_and_its_results_expire_together(
    api: TestClient, pg_sessions: sessionmaker[Session], settings: Settings
) -> None:
    job = api.post("/v1/jobs", json={"model": "churn-risk", "inputs": [ROW] * 3, "ttl_s": 600},
                   headers=A)  # fmt: skip
    assert job.status_code == 202, job.text
    jid = job.json()["id"]
    assert lifetime(job.json()) == timedelta(minutes=10)
    assert api.get(f"/v1/jobs/{jid}", headers=A).json()["expires_at"] == job.json()["expires_at"]
    other = api.post("/v1/jobs", json={"model": "churn-risk", "inputs": [ROW]}, headers=B).json()
    assert lifetime(other) == timedelta(hours=2)  # tenant-b's own
    with session_scope(pg_sessions) as s:
        s.execute(
            update(Job).where(Job.id == jid).values(status="succeeded", expires_at=PAST,
                                                    completed_at=utcnow())
        )  # fmt: skip
    kept = "jobs are kept for 7 days after they are created"
    assert kept in error(api.get(f"/v1/jobs/{jid}", headers=A), 404, "not_found")
    assert kept in error(api.get(f"/v1/jobs/{jid}?wait=1", headers=A), 404, "not_found")
    assert kept in error(api.get(f"/v1/jobs/{jid}/results", headers=A), 404, "not_found")
    assert kept in error(api.post(f"/v1/jobs/{jid}/cancel", headers=A), 404, "not_found")
    assert api.get("/v1/jobs", headers=A).json()["jobs"] == []
    report = purge(engine=pg_sessions.kw["bind"], settings=settings)
    assert (report.deleted["jobs"], report.deleted["job_chunks"]) == (1, 1)
    with pg_sessions() as s:
        assert s.get(Job, jid) is None
        assert s.scalar(select(func.count()).where(JobChunk.job_id == jid)) == 0
    assert kept in error(api.get(f"/v1/jobs/{jid}", headers=A), 404, "not_found")


def test_a_jobs_ttl_is_capped_and_an_upload_gives_it_before_the_file(
    api: TestClient, pg_sessions: sessionmaker[Session]
) -> None:
    over = api.post("/v1/jobs", json={"model": "churn-risk", "inputs": [ROW], "ttl_s": 121},
                    headers=B)  # fmt: skip
    assert "(0, 120]" in error(over, 422, "ttl_too_long")
    assert count(pg_sessions, Job) == 0
    line = b'{"features": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}\n'
    body, ctype = _multipart(
        [("model", b"churn-risk", None), ("ttl_s", b"90", None), ("file", line * 2, "in.jsonl")]
    )
    up = api.post("/v1/jobs", content=body, headers={**B, "Content-Type": ctype})
    assert up.status_code == 202, up.text
    assert lifetime(up.json()) == timedelta(seconds=90)
    body, ctype = _multipart(
        [("model", b"churn-risk", None), ("file", line, "in.jsonl"), ("ttl_s", b"90", None)]
    )
    late = api.post("/v1/jobs", content=body, headers={**B, "Content-Type": ctype})
    assert "must come before the 'file'" in error(late, 422, "invalid_input")
    body, ctype = _multipart([("model", b"churn-risk", None), ("ttl_s", b"soon", None),
                              ("file", line, "in.jsonl")])  # fmt: skip
    error(api.post("/v1/jobs", content=body, headers={**B, "Content-Type": ctype}), 422,
          "invalid_input")  # fmt: skip
    assert count(pg_sessions, Job) == 1


def test_an_expired_delivery_is_a_404_is_not_listed_and_cannot_be_replayed(
    api: TestClient, pg_sessions: sessionmaker[Session]
) -> None:
    row = {"tenant": "tenant-a", "subject_type": "prediction", "subject_id": "p", "url": "x"}
    with session_scope(pg_sessions) as s:
        gone, pending, dead = outbox.add(
            session=s,
            kind="webhook",
            rows=[
                {**row, "status": "delivered", "expires_at": PAST},
                row,
                {**row, "status": "dead", "expires_at": utcnow() + WEEK},
            ],
        )
    msg = error(api.get(f"/v1/deliveries/{gone}", headers=A), 404, "not_found")
    assert msg == f"delivery {gone} not found (deliveries are kept for 7 days after they are final)"
    assert "kept for 7 days" in error(
        api.post(f"/v1/deliveries/{gone}/replay", headers=A), 404, "not_found"
    )
    listed = api.get("/v1/deliveries", headers=A).json()["deliveries"]
    assert {d["id"]: d["expires_at"] for d in listed}.keys() == {pending, dead}
    assert next(d for d in listed if d["id"] == pending)["expires_at"] is None


def _upload(api: TestClient, content: bytes) -> str:
    body, ctype = _multipart([("purpose", b"batch", None), ("file", content, "in.jsonl")])
    up = api.post("/v1/files", content=body, headers={**A, "Content-Type": ctype})
    assert up.status_code == 200, up.text
    return str(up.json()["id"])


def _batch(bid: str, status: str, input_id: str, **columns: Any) -> Batch:
    now = utcnow()
    return Batch(
        id=bid, tenant="tenant-a", status=status, input_file_id=input_id,
        endpoint="/v1/embeddings", completion_window="24h", plan=b"", times={},
        created_at=now, window_ends_at=now + timedelta(days=1), expires_at=now + WEEK,
        **columns,
    )  # fmt: skip


def test_expired_files_and_batches_are_a_404_before_and_after_the_purge(
    api: TestClient, pg_sessions: sessionmaker[Session], settings: Settings
) -> None:
    upload = _upload(api, b'{"custom_id": "a"}\n')
    live_input = _upload(api, b'{"custom_id": "b"}\n')
    now = utcnow()
    with session_scope(pg_sessions) as s:
        s.add(_batch("batch_done", "completed", upload, output_file_id="file-out"))
        files.add_rendered(session=s, file_id="file-out", tenant="tenant-a",
                           batch_id="batch_done", filename="batch_done_output.jsonl", lines=0,
                           expires_at=now + WEEK)  # fmt: skip
        s.add(Job(id="job_b", tenant="tenant-a", model="minilm-embed", model_version="1",
                  status="queued", input_format="jsonl", created_at=now, updated_at=now,
                  expires_at=now + WEEK))  # fmt: skip
        s.add(_batch("batch_live", "in_progress", live_input, job_id="job_b"))
    for fid in (upload, "file-out", live_input):
        assert api.get(f"/v1/files/{fid}", headers=A).status_code == 200
        assert api.get(f"/v1/files/{fid}/content", headers=A).status_code == 200
    assert api.get("/v1/batches/batch_done", headers=A).json()["status"] == "completed"

    with session_scope(pg_sessions) as s:
        s.execute(update(File).values(expires_at=PAST))
        s.execute(update(Batch).values(expires_at=PAST))
    unknown = error(api.get("/v1/files/file-nope", headers=A), 404, "file_not_found")
    assert unknown == "No such File object: file-nope"
    for when in ("before", "after"):
        for fid in (upload, "file-out", live_input):  # an expired file reads as gone ...
            msg = error(api.get(f"/v1/files/{fid}", headers=A), 404, "file_not_found")
            assert msg == f"No such File object: {fid}", when  # the words of an unknown id
            error(api.get(f"/v1/files/{fid}/content", headers=A), 404, "file_not_found")
        msg = error(api.get("/v1/batches/batch_done", headers=A), 404, "batch_not_found")
        assert msg == "No such Batch object: batch_done", when
        error(api.post("/v1/batches/batch_done/cancel", headers=A), 404, "batch_not_found")
        listed = api.get("/v1/batches", headers=A).json()["data"]
        assert [b["id"] for b in listed] == ["batch_live"], when
        # ... and a live batch past its expiry is kept, and shown, until it is final
        live = api.get("/v1/batches/batch_live", headers=A)
        assert live.status_code == 200 and live.json()["status"] == "in_progress", when
        error(api.get("/v1/batches/batch_live", headers=B), 404, "batch_not_found")
        if when == "before":
            report = purge(engine=pg_sessions.kw["bind"], settings=settings)
            deleted = {t: report.deleted[t] for t in ("file_parts", "files", "batches")}
            assert deleted == {"file_parts": 1, "files": 2, "batches": 1}
    with pg_sessions() as s:  # the live batch's input file stays, with its content
        assert s.get(File, upload) is None and s.get(File, "file-out") is None
        assert s.get(File, live_input) is not None and s.get(Batch, "batch_live") is not None
        assert s.scalar(select(func.count()).where(FilePart.file_id == live_input)) == 1
