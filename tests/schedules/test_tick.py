"""The schedules tick on real Postgres, in this process: firing, claiming, watermarks, the
watcher and its restarts, sinks. Chunks are recorded, not run (see test_e2e for the real thing)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import create_engine, select, text, update

from app import __version__
from app.db import schedules as crud
from app.db.base import utcnow
from app.db.engine import session_scope
from app.db.jobs import Job, JobChunk
from app.db.schedules import Schedule, ScheduleRun
from app.jobs.lines import split_records
from app.jobs.service import cancel_job
from app.schedules import runner, service
from app.schedules.runner import Ticker, tick
from app.schedules.specs import ScheduleCreate, ScheduleUpdate

TENANT = "default"


def create(t: Ticker, **over: Any) -> Schedule:
    body = {"name": "s", "cron": "* * * * *", "model": "ticket-triage", **over}
    return service.create_schedule(
        sessions=t.sessions,
        registry=t.registry,
        settings=t.settings,
        tenant=TENANT,
        body=ScheduleCreate.model_validate(body),
    )


def runs(t: Ticker, schedule_id: str) -> list[ScheduleRun]:
    return service.list_runs(sessions=t.sessions, tenant=TENANT, schedule_id=schedule_id)[::-1]


def job_rows(t: Ticker, job_id: str) -> list[dict[str, Any]]:
    with t.sessions() as s:
        chunks = s.scalars(select(JobChunk).where(JobChunk.job_id == job_id).order_by(JobChunk.seq))
        return [orjson.loads(r) for c in chunks for r in split_records(c.lines, "jsonl")]


def get_job(t: Ticker, job_id: str) -> Job:
    with t.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    old = time.time() - 60  # settled: not being written any more
    os.utime(path, (old, old))
    return path


def make_due(t: Ticker, schedule_id: str) -> None:
    with session_scope(t.sessions) as s:
        s.execute(
            update(Schedule)
            .where(Schedule.id == schedule_id)
            .values(next_run_at=utcnow() - timedelta(seconds=1))
        )


def test_a_due_schedule_fires_once_with_full_provenance(ticker: Ticker, roots: Path) -> None:
    src = write_jsonl(
        roots / "in" / "tickets.jsonl",
        [{"custom_id": f"t{i}", "text": f"my invoice {i} is wrong"} for i in range(5)],
    )
    sched = create(ticker, source={"type": "file", "path": "in/*.jsonl"})
    assert tick(ticker).fired == 0  # not due yet: next minute
    make_due(ticker, sched.id)
    report = tick(ticker)
    assert (report.fired, report.ran) == (1, 1)
    assert tick(ticker).fired == 0  # next_run_at moved on: no second firing

    (run,) = runs(ticker, sched.id)
    assert run.trigger == "cron"
    assert run.status == "submitted"
    assert run.job_id is not None
    job = get_job(ticker, run.job_id)
    assert job.schedule_id == sched.id
    assert job.total == 5
    assert [r["custom_id"] for r in job_rows(ticker, job.id)] == [f"t{i}" for i in range(5)]
    entry = ticker.registry.get("ticket-triage")
    for prov in (run.provenance, job.provenance):
        assert prov["schedule"]["id"] == sched.id
        assert prov["schedule"]["run_id"] == run.id
        assert prov["schedule"]["cron"] == "* * * * *"
        assert prov["schedule"]["source"] == {"type": "file", "path": "in/*.jsonl", "watch": False}
        assert prov["data"]["files"] == [
            {
                "path": str(src),
                "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                "bytes": src.stat().st_size,
                "rows": 5,
            }
        ]
        assert prov["model"] == {
            "name": "ticket-triage",
            "version": entry.manifest.version,
            "sha256": entry.manifest.sha256,
        }
        assert prov["inferq_version"] == __version__
    assert job.provenance["parameters"]["chunk_lines"] > 0  # the jobs' own parameters are kept
    with ticker.sessions() as s:
        stored = s.get(Schedule, sched.id)
        assert stored is not None and stored.next_run_at is not None
        assert stored.next_run_at > utcnow()
        assert stored.last_run_at is not None


def test_two_ticks_never_fire_one_schedule_twice(ticker: Ticker, roots: Path) -> None:
    sched = create(ticker, source={"type": "file", "path": "in/*.jsonl"})
    make_due(ticker, sched.id)
    first = ticker.sessions()
    try:
        held = crud.claim_due(session=first, now=utcnow())
        assert [s.id for s in held] == [sched.id]
        # a second beat's tick, meanwhile, skips the locked row
        assert runner.fire_due(ticker.sessions, utcnow()) == 0
        crud.add_run(session=first, schedule=held[0], trigger="cron")
        held[0].next_run_at = utcnow() + timedelta(minutes=1)
        first.commit()
    finally:
        first.close()
    assert runner.fire_due(ticker.sessions, utcnow()) == 0  # and after the commit it is not due
    assert len(runs(ticker, sched.id)) == 1


def test_many_concurrent_ticks_fire_each_due_schedule_once(ticker: Ticker, roots: Path) -> None:
    ids = [
        create(ticker, name=f"s{i}", source={"type": "file", "path": "in/*.jsonl"}).id
        for i in range(6)
    ]
    for sid in ids:
        make_due(ticker, sid)
    fired: list[int] = []
    threads = [
        threading.Thread(target=lambda: fired.append(runner.fire_due(ticker.sessions, utcnow())))
        for _ in range(4)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(fired) == 6
    assert all(len(runs(ticker, sid)) == 1 for sid in ids)


def test_a_disabled_schedule_does_not_fire(ticker: Ticker, roots: Path) -> None:
    sched = create(ticker, source={"type": "file", "path": "in/*.jsonl"})
    make_due(ticker, sched.id)
    service.update_schedule(
        sessions=ticker.sessions,
        registry=ticker.registry,
        settings=ticker.settings,
        tenant=TENANT,
        schedule_id=sched.id,
        patch=ScheduleUpdate(enabled=False),
    )
    assert tick(ticker).fired == 0
    assert runs(ticker, sched.id) == []


def test_nothing_to_read_skips_the_run(ticker: Ticker, roots: Path) -> None:
    sched = create(ticker, source={"type": "file", "path": "in/*.jsonl"})
    service.request_run(sessions=ticker.sessions, tenant=TENANT, schedule_id=sched.id)
    tick(ticker)
    (run,) = runs(ticker, sched.id)
    assert (run.status, run.error, run.job_id) == ("skipped", "no file matches in/*.jsonl", None)


def test_a_source_that_fails_fails_the_run_not_the_tick(ticker: Ticker, roots: Path) -> None:
    write_jsonl(roots / "in" / "a.jsonl", [{"text": "x"}])
    (roots / "in" / "b.jsonl").write_text('{"text": "y"}\n')
    broken = create(ticker, name="broken", source={"type": "file", "path": "in/*.csv"})
    (roots / "in" / "1.csv").write_text("text\nx\n")
    (roots / "in" / "2.csv").write_text("custom_id,text\n1,y\n")
    ok = create(ticker, name="ok", source={"type": "file", "path": "in/*.jsonl"})
    for sid in (broken.id, ok.id):
        service.request_run(sessions=ticker.sessions, tenant=TENANT, schedule_id=sid)
    assert tick(ticker).ran == 2
    (bad,) = runs(ticker, broken.id)
    assert bad.status == "failed"
    assert bad.error == "source: the CSV files matching the path have different headers"
    assert runs(ticker, ok.id)[0].status == "submitted"


def test_a_run_whose_worker_died_is_carried_out_again(ticker: Ticker, roots: Path) -> None:
    write_jsonl(roots / "in" / "a.jsonl", [{"text": "x"}])
    sched = create(ticker, source={"type": "file", "path": "in/*.jsonl"})
    service.request_run(sessions=ticker.sessions, tenant=TENANT, schedule_id=sched.id)
    with session_scope(ticker.sessions) as s:  # claimed by a worker that then died
        run = crud.claim_run(session=s, now=utcnow() - timedelta(hours=1))
        assert run is not None
    assert tick(ticker).ran == 1
    (run,) = runs(ticker, sched.id)
    assert (run.status, run.attempts) == ("submitted", 2)


def test_runs_of_one_schedule_take_turns(ticker: Ticker, roots: Path) -> None:
    one = create(ticker, name="one", source={"type": "file", "path": "in/*.jsonl"})
    two = create(ticker, name="two", source={"type": "file", "path": "in/*.jsonl"})
    for sid in (one.id, one.id, two.id):  # run-now clicked twice on "one"
        service.request_run(sessions=ticker.sessions, tenant=TENANT, schedule_id=sid)
    claimed = []
    for _ in range(3):
        with session_scope(ticker.sessions) as s:
            run = crud.claim_run(session=s, now=utcnow())
            claimed.append(None if run is None else run.schedule_id)
    assert claimed == [one.id, two.id, None]  # the second run of "one" waits for the first


def test_a_csv_source_with_only_a_header_skips_the_run(ticker: Ticker, roots: Path) -> None:
    (roots / "in").mkdir()
    (roots / "in" / "empty.csv").write_text("custom_id,text\n")
    sched = create(ticker, source={"type": "file", "path": "in/*.csv"})
    service.request_run(sessions=ticker.sessions, tenant=TENANT, schedule_id=sched.id)
    tick(ticker)
    (run,) = runs(ticker, sched.id)
    assert (run.status, run.job_id) == ("skipped", None)
    assert run.error is not None and "only a header" in run.error


def test_a_parquet_source_with_feature_columns(ticker: Ticker, roots: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ticker.registry.get("churn-risk").manifest.feature_names
    cols: dict[str, Any] = {"custom_id": [f"c{i}" for i in range(30)]}
    cols.update({n: [float(i + k) for i in range(30)] for k, n in enumerate(names)})
    (roots / "in").mkdir()
    path = roots / "in" / "customers.parquet"
    pq.write_table(pa.table(cols), path, row_group_size=8)
    sched = create(ticker, model="churn-risk", source={"type": "file", "path": "in/*.parquet"})
    service.request_run(sessions=ticker.sessions, tenant=TENANT, schedule_id=sched.id)
    tick(ticker)
    (run,) = runs(ticker, sched.id)
    assert run.status == "submitted", run.error
    rows = job_rows(ticker, run.job_id or "")
    assert len(rows) == 30
    assert rows[1] == {"custom_id": "c1", "input": {"features": [float(1 + k) for k in range(12)]}}
    assert run.provenance["data"]["format"] == "parquet"
    assert (
        run.provenance["data"]["files"][0]["sha256"]
        == hashlib.sha256(path.read_bytes()).hexdigest()
    )


@pytest.fixture
def tickets(pg_url: str) -> Iterator[Any]:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS tickets"))
        conn.execute(text("CREATE TABLE tickets (id int, body text, created_at timestamptz)"))
    yield engine
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS tickets"))
        conn.execute(text("DROP TABLE IF EXISTS ticket_scores"))
    engine.dispose()


def add_tickets(engine: Any, ids: range) -> None:
    with engine.begin() as conn:
        for i in ids:
            conn.execute(
                text("INSERT INTO tickets VALUES (:i, :b, now() + make_interval(secs => :i))"),
                {"i": i, "b": f"ticket {i}: the app crashes"},
            )


def test_sql_source_reads_only_new_rows_each_run(ticker: Ticker, tickets: Any) -> None:
    query = (
        "SELECT id AS custom_id, body AS text, created_at FROM tickets "
        "WHERE created_at > :watermark ORDER BY created_at"
    )
    sched = create(
        ticker,
        source={"type": "sql", "query": query, "watermark_column": "created_at"},
        sink={"type": "table", "table": "ticket_scores"},
    )
    add_tickets(tickets, range(1, 4))

    def run_now() -> ScheduleRun:
        service.request_run(sessions=ticker.sessions, tenant=TENANT, schedule_id=sched.id)
        tick(ticker)
        return runs(ticker, sched.id)[-1]

    first = run_now()
    assert first.status == "submitted"
    assert [r["custom_id"] for r in job_rows(ticker, first.job_id or "")] == ["1", "2", "3"]
    data = first.provenance["data"]
    assert data["query"] == query
    assert data["rows"] == 3
    assert data["watermark_from"] is None
    with ticker.sessions() as s:
        high = s.execute(text("SELECT max(created_at) FROM tickets")).scalar_one()
        stored = s.get(Schedule, sched.id)
        assert stored is not None
        assert stored.watermark == high.isoformat()
    assert data["watermark_to"] == high.isoformat()

    add_tickets(tickets, range(4, 6))
    second = run_now()
    assert [r["custom_id"] for r in job_rows(ticker, second.job_id or "")] == ["4", "5"]
    assert second.provenance["data"]["watermark_from"] == high.isoformat()
    assert second.provenance["data"]["rows"] == 2

    third = run_now()
    assert (third.status, third.error) == ("skipped", "no new rows")

    # the first job ends (cancelled here: no worker in this test); its sink gets one row per input
    cancel_job(sessions=ticker.sessions, tenant=TENANT, job_id=first.job_id or "")
    assert tick(ticker).sinks == 1
    with tickets.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT job_id, job_index, custom_id, status, error FROM ticket_scores ORDER BY job_index"
            )
        ).all()
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (first.job_id, i, str(i + 1), "failed") for i in range(3)
    ]
    assert rows[0][4]["code"] == "cancelled"
    (done,) = [r for r in runs(ticker, sched.id) if r.id == first.id]
    assert done.sink_status == "written"
    assert done.provenance["sink_written"]["rows"] == 3


def test_a_new_file_is_scored_once_across_watcher_restarts(
    ticker: Ticker, roots: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sched = create(
        ticker, cron=None, source={"type": "file", "path": "inbox/*.jsonl", "watch": True}
    )
    inbox = roots / "inbox"
    path = write_jsonl(inbox / "batch-1.jsonl", [{"custom_id": "a", "text": "refund please"}])
    first = tick(ticker)
    assert (first.files, first.ran) == (1, 1)

    restarted = Ticker(  # what a restarted worker builds: nothing but the database carries over
        sessions=ticker.sessions,
        publisher=ticker.publisher,
        registry=ticker.registry,
        settings=ticker.settings,
        cfg=ticker.cfg,
    )
    assert tick(restarted).files == 0
    os.utime(path)  # touched: same content, new mtime
    assert tick(restarted).files == 0
    (run,) = runs(ticker, sched.id)
    assert (run.trigger, run.file_path, run.status) == ("file", str(path), "submitted")
    assert (
        run.provenance["data"]["files"][0]["sha256"]
        == hashlib.sha256(path.read_bytes()).hexdigest()
    )

    # a file still being written (changed just now) waits; once settled it is taken in
    fresh = inbox / "batch-2.jsonl"
    fresh.write_text('{"text": "half')
    slow = Ticker(
        **{
            **restarted.__dict__,
            "cfg": type(ticker.cfg)(source_roots=ticker.cfg.source_roots, settle_seconds=30),
        }
    )
    assert tick(slow).files == 0
    write_jsonl(fresh, [{"text": "half a line, now whole"}])
    assert tick(restarted).files == 1
    assert [r.file_path for r in runs(ticker, sched.id)] == [str(path), str(fresh)]
