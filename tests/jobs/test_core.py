"""Jobs in one process on real Postgres and the real demo models: ingest, run, results.

The broker is replaced by a list that records what would be published (the end-to-end tests in
``test_jobs_e2e.py`` use real brokers and worker processes).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.jobs import Job, JobChunk
from app.errors import Conflict, InvalidInput, NotFound, UnknownModel
from app.jobs import results, service, store
from app.jobs.ingest import JobWriter
from app.jobs.runner import run_chunk, run_chunks
from app.jobs.sweep import sweep_jobs
from app.registry import Registry
from app.runtime.adapters import Adapter, load_adapter
from app.settings import Settings, build_settings

FEATURES = [0.5] * 12


@dataclass
class Recorder:
    """Stands in for the broker: what would have been published."""

    sent: list[tuple[str, str, int]] = field(default_factory=list)
    fail: bool = False

    def publish_job_chunk(self, model: str, job_id: str, seq: int) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((model, job_id, seq))


@dataclass
class Env:
    sessions: sessionmaker[Session]
    settings: Settings
    registry: Registry
    pub: Recorder
    adapters: dict[tuple[str, str], Adapter] = field(default_factory=dict)

    def adapter(self, model: str, version: str) -> Adapter:
        key = (model, version)
        if key not in self.adapters:
            self.adapters[key] = load_adapter(self.registry.get(model, version))
        return self.adapters[key]

    def create(self, model: str, lines: Any, **kw: Any) -> Job:
        return service.create_job(
            sessions=self.sessions,
            publisher=self.pub,
            registry=self.registry,
            settings=self.settings,
            tenant=kw.pop("tenant", "t1"),
            model=model,
            lines=lines,
            **kw,
        )

    def run_all(self) -> list[Any]:
        reports = [
            run_chunk(
                sessions=self.sessions,
                settings=self.settings,
                adapter_for=self.adapter,
                job_id=job_id,
                seq=seq,
            )
            for _, job_id, seq in self.pub.sent
        ]
        self.pub.sent.clear()
        return reports

    def results(self, job_id: str, fmt: str = "jsonl", tenant: str = "t1") -> bytes:
        return b"".join(
            results.open_results(
                sessions=self.sessions,
                registry=self.registry,
                tenant=tenant,
                job_id=job_id,
                fmt=fmt,
            )
        )

    def open_upload(self, model: str) -> JobWriter:
        """A JSONL upload being streamed in (not finished)."""
        return service.open_job(
            sessions=self.sessions,
            publisher=self.pub,
            registry=self.registry,
            settings=self.settings,
            tenant="t1",
            model=model,
            fmt="jsonl",
        )

    def job(self, job_id: str) -> Job:
        return service.get_job(sessions=self.sessions, tenant="t1", job_id=job_id)


@pytest.fixture
def env(pg_url: str, pg_sessions: sessionmaker[Session], models_dir: Path) -> Env:
    settings = build_settings(
        database_url=pg_url, models_dir=models_dir, job_chunk_lines=100, job_tail_split=1
    )
    return Env(pg_sessions, settings, Registry(models_dir), Recorder())


def churn_lines(n: int, bad: dict[int, bytes] | None = None) -> list[bytes]:
    bad = bad or {}
    return [
        bad.get(i) or orjson.dumps({"custom_id": f"r{i}", "input": {"features": FEATURES}})
        for i in range(n)
    ]


def test_a_jsonl_job_runs_to_the_end_with_per_line_errors(env: Env) -> None:
    bad = {
        3: b'{"custom_id": "r3", "input": {"features": [1, 2]}}',
        150: b"not json at all",
        151: b'{"custom_id": "r151", "input": {"features": "x"}, "extra": 1}',
        299: b"[1, 2, 3]",
    }
    job = env.create("churn-risk", churn_lines(300, bad), fmt="jsonl")
    assert job.status == "queued" and job.total == 300 and job.chunks_total == 3
    assert [seq for _, _, seq in env.pub.sent] == [0, 1, 2]
    env.run_all()

    job = env.job(job.id)
    assert (job.status, job.succeeded, job.failed) == ("succeeded", 296, 4)
    lines = [orjson.loads(x) for x in env.results(job.id).splitlines()]
    assert [x["index"] for x in lines] == list(range(300))
    assert lines[0]["custom_id"] == "r0" and 0 <= lines[0]["output"]["probability"] <= 1
    assert lines[3]["error"] == {
        "code": "invalid_input",
        "message": "input.features must have exactly 12 numbers, got 2",
    }
    assert lines[150]["custom_id"] is None
    assert lines[150]["error"]["message"].startswith("the line is not valid JSON")
    assert "unknown field(s) extra" in lines[151]["error"]["message"]
    assert lines[299]["error"]["message"] == "the line must be a JSON object"
    prov = job.provenance
    assert prov["model"]["name"] == "churn-risk" and len(prov["model"]["sha256"]) == 64
    assert prov["source"]["lines"] == 300 and prov["inferq_version"]


def test_the_end_of_a_job_goes_out_in_smaller_chunks(env: Env) -> None:
    """The last full chunk's worth is held back until the input ends, then cut with the rest
    into quarter chunks: workers finish a job together instead of one running a whole chunk."""
    env.settings.job_tail_split = 4
    writer = env.open_upload("churn-risk")
    writer.feed(b"\n".join(churn_lines(330)) + b"\n")
    with env.sessions() as s:  # while the upload goes on: full chunks, one chunk's worth held
        assert s.scalars(select(JobChunk.n_lines).order_by(JobChunk.seq)).all() == [100, 100]
    writer.feed(b"\n".join(churn_lines(100)) + b"\n")
    job = writer.finish({"type": "upload"})
    with env.sessions() as s:
        chunks = s.execute(
            select(JobChunk.seq, JobChunk.start_index, JobChunk.n_lines).order_by(JobChunk.seq)
        ).all()
    assert [c.n_lines for c in chunks] == [100, 100, 100, 25, 25, 25, 25, 25, 5]
    assert [c.start_index for c in chunks] == [0, 100, 200, 300, 325, 350, 375, 400, 425]
    assert job.chunks_total == 9 and [seq for _, _, seq in env.pub.sent] == list(range(9))
    env.run_all()
    assert (env.job(job.id).status, env.job(job.id).succeeded) == ("succeeded", 430)
    out = [orjson.loads(x) for x in env.results(job.id).splitlines()]
    assert [o["index"] for o in out] == list(range(430))


def test_flat_lines_rows_and_blank_lines(env: Env) -> None:
    rows: list[Any] = [{"custom_id": "a", "text": "refund please"}, {"text": "hello"}, "hi"]
    job = env.create("ticket-triage", rows, fmt="rows")
    env.run_all()
    out = [orjson.loads(x) for x in env.results(job.id).splitlines()]
    assert [o["custom_id"] for o in out] == ["a", None, None]
    assert {"category", "urgency"} <= set(out[0]["output"])
    assert out[2]["error"]["message"] == "the line must be a JSON object"

    job = env.create("churn-risk", [b"\n", b'{"features": ' + orjson.dumps(FEATURES) + b"}\r\n"])
    assert job.total == 1


def test_csv_with_quoted_newlines_and_feature_columns(env: Env) -> None:
    text_csv = [b"custom_id,text", b'a,"two\nlines, and a comma"', b"b,plain", b'c,""']
    job = env.create("minilm-embed", text_csv, fmt="csv")
    assert job.total == 3
    env.run_all()
    out = [orjson.loads(x) for x in env.results(job.id).splitlines()]
    assert [o["custom_id"] for o in out] == ["a", "b", "c"]
    assert len(out[0]["output"]["embedding"]) == 384
    assert out[2]["error"]["message"] == "input.text must not be empty"

    header = ",".join(f"f{i}" for i in range(12)).encode()
    rows = [header, b",".join([b"1"] * 12), b",".join([b"1"] * 11 + [b"x"]), b"1,2"]
    job = env.create("churn-risk", rows, fmt="csv")
    env.run_all()
    out = [orjson.loads(x) for x in env.results(job.id).splitlines()]
    assert "output" in out[0]
    assert out[1]["error"]["message"] == "column 'f11': 'x' is not a number"
    assert out[2]["error"]["message"] == "the row has 2 cells; the header has 12"

    csv_out = env.results(job.id, fmt="csv").decode().splitlines()
    assert csv_out[0] == "index,custom_id,probability,error_code,error_message"
    assert csv_out[2].startswith("1,,,invalid_input,")


@pytest.mark.parametrize(
    ("model", "lines", "fmt", "message"),
    [
        ("churn-risk", [], "jsonl", "the input has no input lines"),
        ("churn-risk", [b"   ", b""], "jsonl", "the input has no input lines"),
        ("minilm-embed", [b"custom_id,text"], "csv", "the input has only a header"),
        ("minilm-embed", [b"id,body", b"1,x"], "csv", "the CSV header has no 'text' column"),
        ("minilm-embed", [b"text,lang", b"x,en"], "csv", "unknown column(s) lang"),
        ("churn-risk", [b"tenure_months", b"1"], "csv", "lacks column(s) monthly_charges"),
        ("churn-risk", [b"a,b", b"1,2"], "jsonl", "is not JSONL: its first line 'a,b'"),
        ("churn-risk", [b'x,"open', b"1"], "csv", "ends inside a quoted field"),
    ],
)
def test_input_refused_as_a_whole(
    env: Env, model: str, lines: list[bytes], fmt: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        env.create(model, lines, fmt=fmt)
    assert message in err.value.message
    with env.sessions() as s:
        assert s.scalars(select(Job)).all() == []  # nothing half-stored is left behind


def test_unknown_model(env: Env) -> None:
    with pytest.raises(UnknownModel):
        env.create("nope", [b"{}"])


def test_a_chunk_finished_twice_counts_once(env: Env) -> None:
    job = env.create("churn-risk", churn_lines(150), fmt="jsonl")
    lease = timedelta(seconds=60)
    with env.sessions.begin() as s:
        first = store.claim_chunk(session=s, job_id=job.id, seq=0, lease=lease)
        assert first is not None
        assert store.claim_chunk(session=s, job_id=job.id, seq=0, lease=lease) is None
    with env.sessions.begin() as s:  # the first worker stalls past its lease
        s.execute(update(JobChunk).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    with env.sessions.begin() as s:
        second = store.claim_chunk(session=s, job_id=job.id, seq=0, lease=lease)
        assert second is not None and second.attempt == 2
    result = store.ChunkResult(b"x\n" * 100, 100, 0)
    with env.sessions.begin() as s:
        assert store.finish_chunk(session=s, claim=second, result=result) is not None
    with env.sessions.begin() as s:  # the slow one wakes up: its write is refused
        assert store.finish_chunk(session=s, claim=first, result=result) is None
    assert env.job(job.id).succeeded == 100


def test_cancel_stops_what_has_not_started(env: Env) -> None:
    job = env.create("churn-risk", churn_lines(250), fmt="jsonl", callback_url="http://x/cb")
    first = env.pub.sent.pop(0)
    run_chunk(
        sessions=env.sessions,
        settings=env.settings,
        adapter_for=env.adapter,
        job_id=first[1],
        seq=first[2],
    )
    cancelled = service.cancel_job(sessions=env.sessions, tenant="t1", job_id=job.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled == 150
    assert all(r is None for r in env.run_all())  # their messages arrive: nothing runs
    job = env.job(job.id)
    assert (job.succeeded, job.failed, job.cancelled) == (100, 0, 150)
    out = [orjson.loads(x) for x in env.results(job.id).splitlines()]
    assert "output" in out[99] and out[100]["error"]["code"] == "cancelled"
    assert out[249]["custom_id"] == "r249"
    with pytest.raises(Conflict):
        service.cancel_job(sessions=env.sessions, tenant="t1", job_id=job.id)
    with env.sessions() as s:
        from app.db.deliveries import Delivery

        (delivery,) = s.scalars(select(Delivery)).all()
        assert (delivery.subject_type, delivery.subject_id) == ("job", job.id)


def test_other_tenants_see_nothing(env: Env) -> None:
    job = env.create("churn-risk", churn_lines(5), fmt="jsonl")
    for call in (
        lambda: service.get_job(sessions=env.sessions, tenant="t2", job_id=job.id),
        lambda: service.cancel_job(sessions=env.sessions, tenant="t2", job_id=job.id),
        lambda: env.results(job.id, tenant="t2"),
    ):
        with pytest.raises(NotFound):
            call()


def test_results_wait_for_the_end_and_name_their_format(env: Env) -> None:
    job = env.create("churn-risk", churn_lines(5), fmt="jsonl")
    with pytest.raises(Conflict) as err:
        env.results(job.id)
    assert err.value.code == "job_not_finished"
    env.run_all()
    with pytest.raises(InvalidInput):
        env.results(job.id, fmt="xml")


def test_finished_hooks_run_in_the_ending_transaction(env: Env) -> None:
    seen: list[tuple[str, str]] = []
    hook = lambda s, job: seen.append((job.id, job.status))  # noqa: E731
    service.JOB_FINISHED_HOOKS.append(hook)
    try:
        job = env.create("churn-risk", churn_lines(5), fmt="jsonl")
        env.run_all()
    finally:
        service.JOB_FINISHED_HOOKS.remove(hook)
    assert seen == [(job.id, "succeeded")]


def test_sweeper_publishes_lost_chunks_again(env: Env) -> None:
    env.pub.fail = True
    job = env.create("churn-risk", churn_lines(250), fmt="jsonl")
    env.pub.fail = False
    assert env.pub.sent == []
    report = sweep_jobs(sessions=env.sessions, publisher=env.pub, settings=env.settings)
    assert report.republished == 3
    assert (
        sweep_jobs(sessions=env.sessions, publisher=env.pub, settings=env.settings).republished == 0
    )
    env.run_all()
    assert env.job(job.id).status == "succeeded"
    body = service.job_public(env.job(job.id))
    assert body["request_counts"] == {"total": 250, "succeeded": 250, "failed": 0, "cancelled": 0}
    assert body["results_url"] == f"/v1/jobs/{job.id}/results"


def test_one_message_drains_its_job_and_leaves_the_rest_nothing(env: Env) -> None:
    job = env.create("churn-risk", churn_lines(250), fmt="jsonl")
    kw = {"sessions": env.sessions, "settings": env.settings, "adapter_for": env.adapter}
    first = run_chunks(job_id=job.id, seq=1, **kw)
    assert (first.chunks, first.succeeded) == (3, 250)
    assert run_chunks(job_id=job.id, seq=0, **kw).chunks == 0
    assert env.job(job.id).status == "succeeded"
    out = [orjson.loads(x) for x in env.results(job.id).splitlines()]
    assert [o["custom_id"] for o in out] == [f"r{i}" for i in range(250)]


def test_a_chunk_that_keeps_killing_its_worker_fails_in_the_end(env: Env) -> None:
    job = env.create("churn-risk", churn_lines(150), fmt="jsonl")
    with env.sessions.begin() as s:  # five workers died on chunk 0 already
        s.execute(update(JobChunk).where(JobChunk.seq == 0).values(attempts=5))

    def crash(model: str, version: str) -> Adapter:
        raise RuntimeError("segfault stand-in")

    kw = {"sessions": env.sessions, "settings": env.settings, "job_id": job.id}
    with pytest.raises(RuntimeError):
        run_chunk(
            adapter_for=crash, seq=1, **kw
        )  # a worker dies on chunk 1: it waits for its lease
    assert run_chunk(adapter_for=crash, seq=0, **kw) is not None  # chunk 0 gives up, no crash
    with env.sessions.begin() as s:
        s.execute(update(JobChunk).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert run_chunk(adapter_for=env.adapter, seq=1, **kw) is not None
    job = env.job(job.id)
    assert (job.status, job.succeeded, job.failed) == ("succeeded", 50, 100)
    out = [orjson.loads(x) for x in env.results(job.id).splitlines()]
    assert out[0]["error"]["code"] == "chunk_failed" and out[0]["custom_id"] == "r0"


def test_a_model_gone_from_the_worker_fails_each_line(env: Env) -> None:
    job = env.create("churn-risk", churn_lines(10), fmt="jsonl")

    def gone(model: str, version: str) -> Adapter:
        raise UnknownModel(f"unknown model {model!r}")

    run_chunk(sessions=env.sessions, settings=env.settings, adapter_for=gone, job_id=job.id, seq=0)
    job = env.job(job.id)
    assert (job.status, job.failed) == ("failed", 10)
    out = orjson.loads(env.results(job.id).splitlines()[0])
    assert out["error"] == {"code": "unknown_model", "message": "unknown model 'churn-risk'"}


def test_an_upload_that_died_half_way_is_dropped_by_the_sweeper(env: Env) -> None:
    writer = env.open_upload("churn-risk")
    writer.feed(b"\n".join(churn_lines(250)) + b"\n")  # one chunk stored, then the uploader dies
    assert sweep_jobs(sessions=env.sessions, publisher=env.pub, settings=env.settings).dropped == 0
    with env.sessions.begin() as s:
        s.execute(update(Job).values(updated_at=utcnow() - timedelta(hours=1)))
    assert sweep_jobs(sessions=env.sessions, publisher=env.pub, settings=env.settings).dropped == 1
    with env.sessions() as s:
        assert s.scalars(select(JobChunk)).all() == []


def test_an_aborted_upload_is_dropped_while_a_worker_finishes_one_of_its_chunks(
    env: Env,
) -> None:
    """A worker locks a chunk, then the job (``finish_chunk``); dropping the upload at the same
    time must neither deadlock with it nor leave the job for the sweeper."""
    writer = env.open_upload("churn-risk")
    writer.feed(b"\n".join(churn_lines(350)) + b"\n")  # two chunks stored, the upload goes on
    job_id = writer.job_id
    worker = env.sessions()
    worker.execute(  # the worker's transaction holds chunk 0 ...
        update(JobChunk).where(JobChunk.job_id == job_id, JobChunk.seq == 0).values(succeeded=1)
    )
    aborting = threading.Thread(target=writer.abort)  # ... when the uploader goes away
    aborting.start()
    time.sleep(0.5)  # the drop is now waiting on the worker's lock
    worker.execute(update(Job).where(Job.id == job_id).values(succeeded=Job.succeeded + 1))
    worker.commit()  # a deadlock would have failed one of the two by now (deadlock_timeout 1 s)
    worker.close()
    aborting.join(10)
    assert not aborting.is_alive()
    with env.sessions() as s:
        assert s.scalars(select(JobChunk.seq).where(JobChunk.job_id == job_id)).all() == []
        assert s.get(Job, job_id) is None
