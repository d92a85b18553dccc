"""The one dispatcher against real Postgres and a real receiver on loopback: retries with full
jitter, Retry-After, dead letters with their reason, replay, leases, the egress policy."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.deliveries import Delivery, DeliveryAttempt
from app.db.engine import session_scope
from app.db.models import Prediction
from app.delivery import outbox
from app.delivery.dispatcher import Dispatcher, RetryPolicy, backoff
from app.delivery.egress import EgressPolicy
from app.delivery.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, WebhookChannel, verify
from app.settings import build_settings
from tests.support.receiver import Receiver
from tests.support.rows import add_queued

SECRET = "dispatcher-test-secret"


def test_backoff_is_full_jitter_over_a_doubling_capped_window() -> None:
    policy = RetryPolicy(max_attempts=10, base_s=0.5, cap_s=6.0, timeout_s=1)
    for attempt, window in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 6.0), (9, 6.0)]:
        assert backoff(policy, attempt, rng=lambda: 0.0) == 0.0
        assert backoff(policy, attempt, rng=lambda: 0.999999) == pytest.approx(window, rel=1e-5)
        assert backoff(policy, attempt, rng=lambda: 0.5) == pytest.approx(window / 2)
    import random

    rng = random.Random(7)
    draws = [backoff(policy, 4, rng=rng.random) for _ in range(2000)]
    assert 0 <= min(draws) < 0.1 and 3.9 < max(draws) <= 4.0  # spread over the whole window


def make(
    sessions: sessionmaker[Session],
    *,
    allow: list[str] | None = None,
    resolver: dict[str, str] | None = None,
    max_attempts: int = 3,
    rng: float = 0.5,
) -> Dispatcher:
    settings = build_settings(
        webhook_secret=SECRET,
        webhook_backoff_base_seconds=0.2,
        webhook_max_attempts=max_attempts,
        webhook_timeout_seconds=2,
    )
    table = resolver or {}
    return Dispatcher(
        sessions,
        {"webhook": WebhookChannel(settings)},
        EgressPolicy.parse(["127.0.0.1"] if allow is None else allow),
        threads=2,
        rng=lambda: rng,
        resolver=(lambda host, port: [table[host]]) if table else None,
    )


@pytest.fixture
def dispatcher(pg_sessions: sessionmaker[Session]) -> Iterator[Dispatcher]:
    d = make(pg_sessions)
    yield d
    d.close()


def webhook_for(sessions: sessionmaker[Session], url: str, tenant: str = "t") -> str:
    (pid,) = add_queued(sessions, "churn-risk", [{"features": [1.0] * 12}], tenant=tenant)
    with session_scope(sessions) as s:
        s.execute(update(Prediction).where(Prediction.id == pid).values(status="succeeded"))
        return outbox.add_webhook(
            session=s, tenant=tenant, subject_type="prediction", subject_id=pid, url=url
        )


def settled(sessions: sessionmaker[Session], did: str, timeout: float = 15) -> Delivery:
    end = time.monotonic() + timeout
    while True:
        with sessions() as s:
            d = s.get(Delivery, did)
            assert d is not None
            if d.status != "pending" or time.monotonic() > end:
                return d
        time.sleep(0.05)


def tries(sessions: sessionmaker[Session], did: str) -> list[DeliveryAttempt]:
    with sessions() as s:
        return list(
            s.scalars(
                select(DeliveryAttempt)
                .where(DeliveryAttempt.delivery_id == did)
                .order_by(DeliveryAttempt.id)
            ).all()
        )


def test_retried_with_jitter_then_delivered_signed_with_one_delivery_id(
    pg_sessions: sessionmaker[Session], dispatcher: Dispatcher, receiver: Receiver
) -> None:
    receiver.fail_next = 2
    did = webhook_for(pg_sessions, receiver.url + "/hook")
    dispatcher.submit([did])
    d = settled(pg_sessions, did)
    assert (d.status, d.attempt_count, d.dead_reason) == ("delivered", 3, None)
    got = tries(pg_sessions, did)
    assert [(a.attempt, a.status_code, a.outcome) for a in got] == [
        (1, 500, "retry"),
        (2, 500, "retry"),
        (3, 200, "delivered"),
    ]
    # rng fixed at 0.5: the waits are half of 0.2 s and of 0.4 s (plus an attempt's own time)
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(got)]
    assert 0.1 <= gaps[0] < 0.6 and 0.2 <= gaps[1] < 0.7, gaps
    assert {r.headers[DELIVERY_HEADER.lower()] for r in receiver.requests} == {did}
    assert all(
        verify(SECRET, r.headers[SIGNATURE_HEADER.lower()], r.body) for r in receiver.requests
    )


def test_retry_after_is_honoured(
    pg_sessions: sessionmaker[Session], dispatcher: Dispatcher, receiver: Receiver
) -> None:
    calls: list[float] = []

    def slow_down(_: object) -> tuple[int, object, dict[str, str]] | None:
        calls.append(time.monotonic())
        return (429, {"error": "slow down"}, {"Retry-After": "1"}) if len(calls) == 1 else None

    receiver.responder = slow_down
    did = webhook_for(pg_sessions, receiver.url)
    dispatcher.submit([did])
    assert settled(pg_sessions, did).status == "delivered"
    first, _ = tries(pg_sessions, did)
    assert (first.status_code, first.retry_after_s, first.outcome) == (429, 1.0, "retry")
    assert calls[1] - calls[0] >= 0.95  # not the 0.1 s the jittered backoff would have waited


def test_dead_after_max_attempts_then_replayed_with_a_fresh_budget(
    pg_sessions: sessionmaker[Session], dispatcher: Dispatcher, receiver: Receiver
) -> None:
    receiver.fail_next = 3
    did = webhook_for(pg_sessions, receiver.url)
    dispatcher.submit([did])
    d = settled(pg_sessions, did)
    assert (d.status, d.dead_reason, d.attempt_count) == ("dead", "max_attempts", 3)
    assert d.last_error == "answered 500: {}"
    assert [a.outcome for a in tries(pg_sessions, did)] == ["retry", "retry", "dead"]
    with session_scope(pg_sessions) as s:
        assert outbox.due(session=s) == []  # dead letters are not swept
    # another tenant cannot see or replay it
    with pytest.raises(Exception, match="not found"):
        outbox.replay_dead(sessions=pg_sessions, tenant="other", delivery_ids=[did])
    assert outbox.replay_dead(sessions=pg_sessions, tenant="t", delivery_ids=[did]) == [did]
    assert outbox.replay_dead(sessions=pg_sessions, tenant="t", delivery_ids=[did]) == []  # once
    assert dispatcher.sweep() == 1
    d = settled(pg_sessions, did)
    assert (d.status, d.attempt_count, d.replay_base, d.dead_reason) == ("delivered", 4, 3, None)
    assert [a.attempt for a in tries(pg_sessions, did)] == [1, 2, 3, 4]


def test_a_webhook_retries_any_non_2xx_answer(
    pg_sessions: sessionmaker[Session], dispatcher: Dispatcher, receiver: Receiver
) -> None:
    receiver.fail_next, receiver.fail_status = 1, 404
    did = webhook_for(pg_sessions, receiver.url)
    dispatcher.submit([did])
    assert settled(pg_sessions, did).status == "delivered"  # any non-2xx of a webhook retries
    assert [a.status_code for a in tries(pg_sessions, did)] == [404, 200]


def test_the_subject_gone_makes_it_dead_without_sending(
    pg_sessions: sessionmaker[Session], dispatcher: Dispatcher, receiver: Receiver
) -> None:
    did = webhook_for(pg_sessions, receiver.url)
    with session_scope(pg_sessions) as s:
        d = s.get(Delivery, did)
        assert d is not None
        s.execute(update(Delivery).where(Delivery.id == did).values(subject_id="pred_gone"))
    dispatcher.submit([did])
    d = settled(pg_sessions, did)
    assert (d.status, d.dead_reason) == ("dead", "gone")
    assert receiver.requests == []


def test_egress_denied_at_connect_is_dead_at_once_and_nothing_is_sent(
    pg_sessions: sessionmaker[Session], receiver: Receiver
) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    sender = make(pg_sessions, allow=[], resolver={"hooks.example.test": "127.0.0.1"})
    try:
        named = webhook_for(pg_sessions, f"http://hooks.example.test:{port}/h")
        literal = webhook_for(pg_sessions, receiver.url)
        sender.submit([named, literal])
        for did in (named, literal):
            d = settled(pg_sessions, did)
            assert (d.status, d.dead_reason, d.attempt_count) == ("dead", "egress_denied", 1)
            assert "loopback" in (d.last_error or "")
    finally:
        sender.close()
    assert receiver.requests == []
    allowed = make(
        pg_sessions, allow=["hooks.example.test"], resolver={"hooks.example.test": "127.0.0.1"}
    )
    try:  # the operator opens exactly that name: the replay goes through
        outbox.replay_dead(sessions=pg_sessions, tenant="t", delivery_ids=[named])
        allowed.submit([named])
        assert settled(pg_sessions, named).status == "delivered"
    finally:
        allowed.close()
    assert len(receiver.requests) == 1


def test_two_dispatchers_never_send_the_same_attempt_twice(
    pg_sessions: sessionmaker[Session], receiver: Receiver
) -> None:
    receiver.delay_s = 0.3
    a, b = make(pg_sessions), make(pg_sessions)
    try:
        ids = [webhook_for(pg_sessions, receiver.url) for _ in range(10)]
        start = threading.Barrier(2)

        def go(d: Dispatcher) -> None:
            start.wait()
            for did in ids:
                d.deliver(did)

        threads = [threading.Thread(target=go, args=(d,)) for d in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        a.close()
        b.close()
    assert sorted(r.headers["x-inferq-delivery"] for r in receiver.requests) == sorted(ids)
    for did in ids:
        assert [t.attempt for t in tries(pg_sessions, did)] == [1]


def test_a_lease_left_by_a_dead_process_is_taken_over_after_it_runs_out(
    pg_sessions: sessionmaker[Session], dispatcher: Dispatcher, receiver: Receiver
) -> None:
    did = webhook_for(pg_sessions, receiver.url)
    with session_scope(pg_sessions) as s:  # claimed by a process that died mid-send
        s.execute(
            update(Delivery)
            .where(Delivery.id == did)
            .values(lease_expires_at=utcnow() + timedelta(seconds=1))
        )
        assert outbox.due(session=s) == []
    assert dispatcher.deliver(did) is False  # held: not sent
    time.sleep(1.1)
    assert dispatcher.sweep() == 1
    assert settled(pg_sessions, did).status == "delivered"
