"""Submit, poll, webhook: end to end over HTTP with real workers, on Redis and on RabbitMQ."""

from __future__ import annotations

import math
import time
from itertools import pairwise

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.deliveries import Delivery, DeliveryAttempt
from app.delivery.webhook import verify
from tests.conftest import StackFactory
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow

SECRET = "e2e-secret"


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "amqp_url"))


def test_submit_poll_and_webhook(
    make_stack: StackFactory,
    broker_url: str,
    receiver: Receiver,
    pg_sessions: sessionmaker[Session],
) -> None:
    stack = make_stack(broker_url, webhook_secret=SECRET)
    with stack.client() as c:
        # one input per model, each polled with ?wait
        emb = c.post(
            "/v1/predictions",
            json={"model": "minilm-embed", "input": {"text": "I was charged twice"}},
        )
        assert emb.status_code == 202 and emb.json()["status"] == "queued"
        got = c.get(f"/v1/predictions/{emb.json()['id']}", params={"wait": 30}).json()
        assert got["status"] == "succeeded", got
        vec = got["output"]["embedding"]
        assert len(vec) == 384 and math.isclose(math.fsum(x * x for x in vec), 1.0, rel_tol=1e-4)
        assert got["model_version"] and got["batch_size"] >= 1
        assert got["created_at"] <= got["started_at"] <= got["completed_at"]

        tri = c.post(
            "/v1/predictions",
            json={
                "model": "ticket-triage",
                "input": {"text": "Production is down, nobody can log in, please help ASAP"},
                "callback_url": f"{receiver.url}/hook",
                "metadata": {"ticket": 7},
            },
        )
        churn = c.post(
            "/v1/predictions", json={"model": "churn-risk", "input": {"features": [3.0] * 12}}
        )
        # Prefer: wait answers the POST itself with the finished prediction (200)
        now = c.post(
            "/v1/predictions",
            json={"model": "churn-risk", "input": {"features": [2.0] * 12}},
            headers={"Prefer": "wait=30"},
        )
        assert now.status_code == 200 and now.headers["preference-applied"] == "wait=30"
        done = now.json()
        assert done["status"] == "succeeded" and 0.0 <= done["output"]["probability"] <= 1.0
        assert now.headers["location"] == f"/v1/predictions/{done['id']}"
        assert c.get(now.headers["location"]).json() == done
        # answered from the worker's NOTIFY (no read back): the same document as GET reads
        vec_now = c.post(
            "/v1/predictions",
            json={
                "model": "minilm-embed",
                "input": {"text": "refund please"},
                "metadata": {"ticket": 8, "tags": ["a\tb", "ü"]},
                "ttl_s": 3600,
                "priority": "low",
            },
            headers={"Prefer": "wait=30"},
        )
        assert vec_now.status_code == 200, vec_now.text
        assert vec_now.headers["content-type"] == "application/json"
        assert c.get(vec_now.headers["location"]).json() == vec_now.json()
        assert vec_now.json()["metadata"] == {"ticket": 8, "tags": ["a\tb", "ü"]}
        many = c.post(
            "/v1/predictions",
            json={
                "model": "churn-risk",
                "priority": "high",
                "inputs": [{"features": [float(i)] * 12} for i in range(5)],
            },
        )
        assert many.status_code == 202
        ids = [p["id"] for p in many.json()["predictions"]]
        assert len(ids) == 5 and all(p["status"] == "queued" for p in many.json()["predictions"])

        t = c.get(f"/v1/predictions/{tri.json()['id']}", params={"wait": 30}).json()
        assert t["status"] == "succeeded" and t["metadata"] == {"ticket": 7}
        assert t["output"]["category"] in t["output"]["category_scores"]
        assert math.isclose(sum(t["output"]["category_scores"].values()), 1.0, rel_tol=1e-3)
        p = c.get(f"/v1/predictions/{churn.json()['id']}", params={"wait": 30}).json()
        assert 0.0 <= p["output"]["probability"] <= 1.0
        for pid in ids:
            assert (
                c.get(f"/v1/predictions/{pid}", params={"wait": 30}).json()["status"] == "succeeded"
            )

    # the webhook: same body as GET, signed with INFERQ_WEBHOOK_SECRET
    (hook,) = receiver.wait_for(lambda reqs: len(reqs) >= 1)
    assert hook.path == "/hook"
    assert verify(SECRET, hook.headers["x-inferq-signature"], hook.body)
    assert not verify("another-secret", hook.headers["x-inferq-signature"], hook.body)
    assert hook.json() == t
    d = delivered(pg_sessions)
    assert hook.headers["x-inferq-delivery"] == d.id
    with pg_sessions() as s:
        assert s.scalars(select(DeliveryAttempt.status_code)).all() == [200]


def delivered(sessions: sessionmaker[Session], timeout: float = 20) -> Delivery:
    """The one delivery, once the worker has recorded its answer (just after the receiver got it)."""
    end = time.monotonic() + timeout
    while True:
        with sessions() as s:
            d = s.scalars(select(Delivery)).one()
        if d.status == "delivered" or time.monotonic() > end:
            assert d.status == "delivered"
            return d
        time.sleep(0.05)


def test_webhook_retried_with_backoff_and_every_attempt_recorded(
    make_stack: StackFactory,
    redis_url: str,
    receiver: Receiver,
    pg_sessions: sessionmaker[Session],
) -> None:
    receiver.fail_next = 2
    stack = make_stack(redis_url, webhook_secret=SECRET, webhook_backoff_base_seconds=0.2)
    with stack.client() as c:
        pid = c.post(
            "/v1/predictions",
            json={
                "model": "churn-risk",
                "input": {"features": [1] * 12},
                "callback_url": receiver.url,
            },
        ).json()["id"]
        assert c.get(f"/v1/predictions/{pid}", params={"wait": 30}).json()["status"] == "succeeded"
    reqs = receiver.wait_for(lambda r: len(r) >= 3)
    assert len({r.headers["x-inferq-delivery"] for r in reqs}) == 1
    assert all(verify(SECRET, r.headers["x-inferq-signature"], r.body) for r in reqs)
    d = delivered(pg_sessions)
    with pg_sessions() as s:
        attempts = s.scalars(select(DeliveryAttempt).order_by(DeliveryAttempt.attempt)).all()
    assert d.status == "delivered" and d.attempt_count == 3
    assert [a.status_code for a in attempts] == [500, 500, 200]
    assert attempts[0].error == "answered 500: {}"
    assert [a.outcome for a in attempts] == ["retry", "retry", "delivered"]
    # full jitter: each wait is within [0, base * 2**(n-1)] (plus the time an attempt takes)
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in pairwise(attempts)]
    assert all(0 <= g < 0.2 * 2**i + 1.0 for i, g in enumerate(gaps)), gaps


def test_slow_receiver_does_not_hold_up_batches(
    make_stack: StackFactory,
    redis_url: str,
    receiver: Receiver,
) -> None:
    receiver.delay_s = 4.0
    stack = make_stack(redis_url, webhook_timeout_seconds=10)
    with stack.client() as c:
        slow = c.post(
            "/v1/predictions",
            json={
                "model": "churn-risk",
                "input": {"features": [1] * 12},
                "callback_url": receiver.url,
            },
        ).json()["id"]
        assert c.get(f"/v1/predictions/{slow}", params={"wait": 30}).json()["status"] == "succeeded"
        receiver.wait_for(lambda r: len(r) >= 1)  # the receiver is now sitting on the webhook
        ids = [
            c.post(
                "/v1/predictions", json={"model": "churn-risk", "input": {"features": [i] * 12}}
            ).json()["id"]
            for i in range(20)
        ]
        for pid in ids:
            assert (
                c.get(f"/v1/predictions/{pid}", params={"wait": 30}).json()["status"] == "succeeded"
            )
        # all 20 finished while the first webhook was still being held by the receiver
        assert len(receiver.requests) == 1
