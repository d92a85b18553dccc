"""Poison inputs with real processes: an input that kills its worker every time ends
``failed`` / ``worker_lost`` after ``INFERQ_MAX_ATTEMPTS`` losses, everything that shared its
batch or its process ends ``succeeded``, and the webhooks go out.

The worker dies through ``INFERQ_TEST_CRASH_ON`` (``app.poison``: ``os._exit(1)`` on an input
carrying the marker); the test restarts it whenever it is gone, as a process manager would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Prediction
from app.delivery.webhook import SIGNATURE_HEADER, verify
from tests.conftest import Stack, StackFactory
from tests.support.procs import Proc
from tests.support.receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MARK = 31337.25
POISON = {"features": [MARK] + [0.5] * 11}
FAST: dict[str, Any] = {"lease_seconds": 2, "requeue_after_seconds": 2, "test_crash_on": str(MARK)}


def supervise(stack: Stack, worker: Proc, done: Callable[[], bool], timeout: float = 150) -> int:
    """Restart the worker whenever it has died until ``done()``; returns how often it died."""
    deaths = 0
    end = time.monotonic() + timeout
    alive: Proc | None = worker
    while not done():
        assert time.monotonic() < end, f"not done in {timeout}s ({deaths} worker deaths)"
        if alive is None or not alive.alive():
            deaths += 1
            assert deaths <= 6, "the worker keeps dying"
            try:
                alive = stack.start_worker(f"restarted{deaths}")
            except RuntimeError:  # died before it said it was ready (a redelivered message)
                alive = None
                continue
        time.sleep(0.2)
    return deaths


def live(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(
            s.execute(
                select(func.count()).where(Prediction.status.in_(("queued", "running")))
            ).scalar_one()
        )


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_poison_prediction_ends_worker_lost_and_its_batch_mates_succeed(
    make_stack: StackFactory,
    broker: str,
    request: pytest.FixtureRequest,
    pg_sessions: sessionmaker[Session],
    receiver: Receiver,
) -> None:
    url = request.getfixturevalue("redis_url" if broker == "redis" else "amqp_url")
    stack = make_stack(url, beat=True, **FAST)
    inputs = [{"features": [0.05 * i] * 12} for i in range(20)]
    inputs.insert(7, POISON)  # one message, one batch: all 21 die with the worker the first time
    with stack.client() as c:
        r = c.post(
            "/v1/predictions",
            json={"model": "churn-risk", "inputs": inputs, "callback_url": f"{receiver.url}/h"},
        )
        assert r.status_code == 202, r.text
        ids = [p["id"] for p in r.json()["predictions"]]
        deaths = supervise(stack, stack.procs[0], lambda: live(pg_sessions) == 0)
        bodies = {pid: c.get(f"/v1/predictions/{pid}").json() for pid in ids}
    poison_id = ids.pop(7)
    assert deaths == 3
    assert {bodies[i]["status"] for i in ids} == {"succeeded"}
    assert bodies[poison_id]["status"] == "failed"
    assert bodies[poison_id]["error"]["code"] == "worker_lost"
    assert "was lost 3 times" in bodies[poison_id]["error"]["message"]
    with pg_sessions() as s:
        attempts = dict(s.execute(select(Prediction.id, Prediction.attempts)).all())
    assert attempts[poison_id] == 3
    assert max(attempts[i] for i in ids) <= 2  # lost once with it at most, then run alone
    # a webhook the dying worker had claimed but not sent goes out once its delivery lease
    # (three send timeouts plus 5 s) has run out: hence the long wait
    # (a send the killed worker was cut off in reaches the receiver without its body: it is
    # sent again, whole; only whole ones count)
    got = receiver.wait_for(lambda rs: len({d["id"] for d in whole(rs)}) == 21, timeout=60)
    (hook,) = [x for x in got if x.body and whole([x]) and x.json()["id"] == poison_id][:1]
    assert hook.json()["error"]["code"] == "worker_lost"
    secret = stack.settings().webhook_secret
    assert verify(secret, hook.headers[SIGNATURE_HEADER.lower()], hook.body)


def whole(received: list[Any]) -> list[dict[str, Any]]:
    """The JSON bodies of the requests that arrived whole."""
    out = []
    for x in received:
        try:
            out.append(x.json())
        except ValueError:
            continue
    return out


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_poison_job_line_ends_worker_lost_with_exact_counts(
    make_stack: StackFactory, broker: str, request: pytest.FixtureRequest, receiver: Receiver
) -> None:
    url = request.getfixturevalue("redis_url" if broker == "redis" else "amqp_url")
    stack = make_stack(url, beat=True, job_chunk_lines=10, job_tail_split=1, **FAST)
    lines = [
        orjson.dumps(
            {"custom_id": f"c{i}", "input": POISON if i == 17 else {"features": [0.1] * 12}}
        )
        for i in range(30)
    ]
    with stack.client() as c:
        r = c.post(
            "/v1/jobs",
            data={"model": "churn-risk", "callback_url": f"{receiver.url}/jobs"},
            files={"file": ("in.jsonl", b"\n".join(lines) + b"\n", "application/octet-stream")},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        def ended() -> bool:
            return c.get(f"/v1/jobs/{job_id}").json()["status"] not in ("queued", "running")

        deaths = supervise(stack, stack.procs[0], ended)
        body = c.get(f"/v1/jobs/{job_id}").json()
        out = [orjson.loads(x) for x in c.get(f"/v1/jobs/{job_id}/results").content.splitlines()]
    assert deaths == 3
    assert body["status"] == "succeeded"
    counts = body["request_counts"]
    assert (counts["total"], counts["succeeded"], counts["failed"]) == (30, 29, 1)
    assert [x["custom_id"] for x in out] == [f"c{i}" for i in range(30)]
    assert out[17]["error"]["code"] == "worker_lost"
    assert "was lost 3 times" in out[17]["error"]["message"]
    assert all("output" in x for i, x in enumerate(out) if i != 17)
    (hook,) = receiver.wait_for(lambda rs: len(rs) >= 1, timeout=30)
    assert hook.json()["id"] == job_id and hook.json()["request_counts"]["failed"] == 1
