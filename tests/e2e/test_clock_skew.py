"""A worker whose clock is an hour off batches and holds its leases as if it were right: every
process stamps instants on the database's clock (``app.clock``).

Uncorrected, a worker an hour ahead would take every request as an hour old (past its model's
``max_delay_ms``: batches of one) and stamp leases an hour late; one an hour behind would stamp
leases that the other worker's sweeper finds run out at once (its requests taken over: claimed
twice). The skew is injected with ``INFERQ_TEST_CLOCK_SKEW_SECONDS`` in the worker only.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.clock import SKEW_ENV
from app.db.models import Prediction
from tests.conftest import Stack, StackFactory
from tests.support.procs import Proc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

N = 300


def skewed_worker(stack: Stack, skew_s: float, name: str, queues: list[str] | None = None) -> Proc:
    env = dict(stack.env)
    stack.env[SKEW_ENV] = str(skew_s)
    try:
        worker = stack.start_worker(name, queues=queues)
    finally:
        stack.env.clear()
        stack.env.update(env)
    worker.wait_for_log("clock is off the database", timeout=60)
    return worker


def submit(stack: Stack, n: int, **extra: object) -> list[str]:
    ids: list[str] = []
    with stack.client() as c:
        for start in range(0, n, 50):
            r = c.post(
                "/v1/predictions",
                json={
                    "model": "minilm-embed",
                    "inputs": [
                        {"text": f"a short text number {i}"}
                        for i in range(start, min(n, start + 50))
                    ],
                    **extra,
                },
            )
            assert r.status_code == 202, r.text
            ids += [p["id"] for p in r.json()["predictions"]]
    return ids


def wait_final(sessions: sessionmaker[Session], ids: list[str], timeout: float) -> None:
    end = time.monotonic() + timeout
    while True:
        with sessions() as s:
            live = s.execute(
                select(func.count()).where(
                    Prediction.id.in_(ids), Prediction.status.in_(("queued", "running"))
                )
            ).scalar_one()
        if not live:
            return
        assert time.monotonic() < end, f"{live} of {len(ids)} not final in {timeout:.0f} s"
        time.sleep(0.1)


def rows(sessions: sessionmaker[Session], ids: list[str]) -> list[Prediction]:
    with sessions() as s:
        return list(s.scalars(select(Prediction).where(Prediction.id.in_(ids))).all())


def test_a_worker_an_hour_ahead_batches_and_its_leases_run_out_on_time(
    make_stack: StackFactory, redis_url: str, pg_sessions: sessionmaker[Session]
) -> None:
    stack = make_stack(redis_url, workers=0, beat=True, lease_seconds=5)
    ahead = skewed_worker(stack, 3600, "ahead")
    ids = submit(stack, N)
    wait_final(pg_sessions, ids, 120)
    done = rows(pg_sessions, ids)
    assert {r.status for r in done} == {"succeeded"} and {r.attempts for r in done} == {1}
    mean_batch = sum(r.batch_size or 0 for r in done) / len(done)
    assert mean_batch > 2, mean_batch  # an hour "late", every request would run alone
    for r in done:  # stamped on the database's clock, not an hour ahead
        assert r.started_at is not None and r.completed_at is not None
        assert abs((r.completed_at - r.started_at).total_seconds()) < 60
    # its leases end when the database says: killed mid-work, its requests are taken over
    # within the lease (an hour later, had it stamped them with its own clock)
    more = submit(stack, N)
    end = time.monotonic() + 60
    while not any(r.status == "running" for r in rows(pg_sessions, more)):
        assert time.monotonic() < end
        time.sleep(0.02)
    ahead.kill()
    stack.start_worker("right")
    wait_final(pg_sessions, more, 90)
    assert {r.status for r in rows(pg_sessions, more)} == {"succeeded"}


def test_a_worker_an_hour_behind_still_expires_requests_past_their_deadline(
    make_stack: StackFactory, redis_url: str, pg_sessions: sessionmaker[Session]
) -> None:
    stack = make_stack(redis_url, workers=0, beat=True, lease_seconds=5)
    late = submit(stack, 40, deadline_s=1)
    on_time = submit(stack, 40)
    time.sleep(2.5)  # past the first ones' deadline before any worker runs
    skewed_worker(stack, -3600, "behind")  # to its own clock, the deadline is an hour away
    wait_final(pg_sessions, late + on_time, 120)
    assert {r.status for r in rows(pg_sessions, late)} == {"expired"}
    assert {r.status for r in rows(pg_sessions, on_time)} == {"succeeded"}
