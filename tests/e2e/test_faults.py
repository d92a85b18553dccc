"""Accepted means never lost: a killed worker, a broker that was down."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Prediction
from tests.conftest import StackFactory

pytestmark = pytest.mark.slow

TEXTS = [
    "My card was charged twice for the same order and I need a refund",
    "The app crashes whenever I open the settings page on Android",
    "I cannot log in: the password reset email never arrives",
    "Where is my package? Tracking has not changed for a week",
]


def wait_all(c: httpx.Client, ids: list[str], timeout: float = 120) -> dict[str, str]:
    end = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    for pid in ids:
        while True:
            body = c.get(f"/v1/predictions/{pid}", params={"wait": 5}).json()
            statuses[pid] = body["status"]
            if body["status"] not in ("queued", "running") or time.monotonic() > end:
                break
    return statuses


def counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as s:
        return dict(
            s.execute(select(Prediction.status, func.count()).group_by(Prediction.status)).all()
        )


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_sigkilled_worker_loses_nothing(
    make_stack: StackFactory,
    broker: str,
    request: pytest.FixtureRequest,
    pg_sessions: sessionmaker[Session],
) -> None:
    url = request.getfixturevalue("redis_url" if broker == "redis" else "amqp_url")
    stack = make_stack(url, lease_seconds=3, requeue_after_seconds=4, beat=True)
    n = 600
    with stack.client() as c:
        ids: list[str] = []
        for start in range(0, n, 100):
            body = {
                "model": "minilm-embed",
                "inputs": [{"text": f"{TEXTS[i % 4]} (case {start + i})"} for i in range(100)],
            }
            ids += [p["id"] for p in c.post("/v1/predictions", json=body).json()["predictions"]]
        # wait until the worker is in the middle of the work, then kill it without warning
        end = time.monotonic() + 60
        while counts(pg_sessions).get("succeeded", 0) < 20 and time.monotonic() < end:
            time.sleep(0.05)
        before = counts(pg_sessions)
        worker = stack.procs[0]
        worker.kill()
        assert before.get("succeeded", 0) < n, "the worker finished before it could be killed"
        after_kill = counts(pg_sessions)
        assert after_kill.get("queued", 0) + after_kill.get("running", 0) > 0
        stack.start_worker("replacement")
        statuses = wait_all(c, ids)
    assert set(statuses.values()) == {"succeeded"}, counts(pg_sessions)
    assert counts(pg_sessions) == {"succeeded": n}


def test_broker_down_at_submit_delays_but_loses_nothing(
    make_stack: StackFactory,
    redis_url: str,
    pg_sessions: sessionmaker[Session],
) -> None:
    # an API whose broker is unreachable still accepts (Postgres is the source of truth) ...
    dead = make_stack("redis://127.0.0.1:1/0", workers=0)
    with dead.client() as c:
        resp = [
            c.post("/v1/predictions", json={"model": "churn-risk", "input": {"features": [i] * 12}})
            for i in range(10)
        ]
    assert all(r.status_code == 202 for r in resp)
    ids = [r.json()["id"] for r in resp]
    with pg_sessions() as s:
        rows = s.scalars(select(Prediction).where(Prediction.id.in_(ids))).all()
    assert len(rows) == 10 and all(r.published_at is None for r in rows)
    # ... and once a broker is there, the sweeper (beat) publishes them and they run
    live = make_stack(redis_url, beat=True, api=True)
    with live.client() as c:
        assert set(wait_all(c, ids, timeout=60).values()) == {"succeeded"}


def test_cut_database_connections_cost_no_request(
    make_stack: StackFactory, redis_url: str, pg_sessions: sessionmaker[Session]
) -> None:
    """Every pooled connection of the API and the workers dies at once (as in a Postgres
    restart): the next requests are accepted and run; nothing is lost or left behind."""
    stack = make_stack(redis_url)
    churn = {"model": "churn-risk", "input": {"features": [0.5] * 12}}
    with stack.client() as c:
        warm = c.post("/v1/predictions", json=churn, headers={"Prefer": "wait=30"})
        assert warm.status_code == 200 and warm.json()["status"] == "succeeded"
        with pg_sessions() as s:
            cut = s.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).all()
        assert len(cut) >= 3, "expected the API's and the workers' connections"
        resp = [c.post("/v1/predictions", json=churn) for _ in range(5)]
        assert [r.status_code for r in resp] == [202] * 5, [r.text for r in resp]
        statuses = wait_all(c, [r.json()["id"] for r in resp], timeout=60)
    assert set(statuses.values()) == {"succeeded"}
