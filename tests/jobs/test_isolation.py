"""A chunk whose worker died runs line by line: the line that kills workers ends ``worker_lost``
and the rest of the chunk runs, with the job's counts exact. A dying worker is simulated by an
exception nothing catches, its lease by moving ``lease_expires_at`` into the past."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update

from app import poison
from app.db.base import utcnow
from app.db.jobs import JobChunk
from app.jobs.isolation import Probe, run_isolated
from app.jobs.runner import run_chunk
from app.jobs.sweep import sweep_jobs
from tests.jobs.test_core import Env, churn_lines, env  # noqa: F401

MARK = 31337.25


class Died(BaseException):
    """The worker process is gone (nothing in it catches this)."""


def crash(inputs: Iterable[Any]) -> None:
    if any(
        str(MARK) in orjson.dumps(x, option=orjson.OPT_SERIALIZE_NUMPY).decode() for x in inputs
    ):
        raise Died()


def test_probe_charges_the_line_it_was_running() -> None:
    probe = Probe.load(Probe(clear=2, at=5, lost={5: 1}).dump())
    assert probe == Probe(2, 5, {5: 1})
    charged = probe.charged()
    assert charged == Probe(5, None, {5: 2}) and charged.losses(5) == 3 and charged.explained == 2
    assert Probe.load(None).charged() == Probe()


def test_isolated_lines_run_alone_after_those_known_to_run() -> None:
    calls: list[list[int]] = []
    saved: list[int | None] = []

    def run(_: Any, xs: Any, batch: int) -> list[Any]:
        calls.append(list(xs))
        return [({"y": x}, None) for x in xs]

    outcomes = run_isolated(
        None,  # type: ignore[arg-type]
        [0, 1, 2, 4, 5],
        [10, 11, 12, 14, 15],
        probe=Probe(clear=2, lost={4: 2}),
        max_attempts=3,
        run=run,
        batch=64,
        save=lambda p: saved.append(p.at),
    )
    assert calls == [[10, 11], [12], [15]]  # known lines batched, then one at a time
    assert saved == [2, 5, None]
    assert outcomes[3][1] is not None and outcomes[3][1]["code"] == "worker_lost"
    assert "lost 3 times" in outcomes[3][1]["message"]
    assert [o[0] for o in outcomes] == [{"y": 10}, {"y": 11}, {"y": 12}, None, {"y": 15}]


def die_once(e: Env, job_id: str, seq: int) -> None:
    """Run the chunk; its worker dies on the marker; the lease then runs out."""
    with pytest.raises(Died):
        run_chunk(
            sessions=e.sessions, settings=e.settings, adapter_for=e.adapter, job_id=job_id, seq=seq
        )
    with e.sessions.begin() as s:
        s.execute(update(JobChunk).values(lease_expires_at=utcnow()))


def test_the_poison_line_fails_worker_lost_and_the_rest_of_the_chunk_runs(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(poison, "crash_if_marked", crash)
    marker = orjson.dumps({"custom_id": "r7", "input": {"features": [MARK] + [0.5] * 11}})
    job = env.create("churn-risk", churn_lines(12, {7: marker}), fmt="jsonl")
    (_, job_id, seq) = env.pub.sent.pop()
    die_once(env, job_id, seq)  # batched: every line is lost once
    sweep_jobs(sessions=env.sessions, publisher=env.pub, settings=env.settings)
    assert env.pub.sent == [("churn-risk", job_id, seq)]  # published again at once
    # the table loop leaves a chunk whose run was lost to its own message (run in isolation)
    kw: dict[str, Any] = {"sessions": env.sessions, "settings": env.settings}
    assert run_chunk(**kw, adapter_for=env.adapter, job_id=job_id, seq=None) is None
    die_once(env, job_id, seq)  # alone: the marker line is found
    die_once(env, job_id, seq)  # ... and charged again
    report = run_chunk(**kw, adapter_for=env.adapter, job_id=job_id, seq=seq)
    assert report is not None and (report.succeeded, report.failed) == (11, 1)
    done = env.job(job.id)
    assert (done.status, done.succeeded, done.failed) == ("succeeded", 11, 1)
    lines = [orjson.loads(x) for x in env.results(job.id).splitlines()]
    assert lines[7]["error"]["code"] == "worker_lost"
    assert lines[7]["error"]["message"].startswith("the worker running it was lost 3 times")
    assert all("output" in x for i, x in enumerate(lines) if i != 7)
    with env.sessions() as s:
        assert s.scalars(select(JobChunk.attempts)).all() == [4]
