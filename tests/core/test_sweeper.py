"""The sweeper in one process on real Postgres: poison inputs end ``worker_lost``, and queued work
is published again only when its message may be lost (``app.requeue``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db import predictions as crud
from app.db.base import utcnow
from app.db.deliveries import Delivery
from app.db.models import Prediction
from app.delivery.webhook import write_hook
from app.notify import CompletionHub
from app.predictions.executor import ExecutorPool
from app.predictions.sweeper import sweep_predictions
from app.registry import Registry
from app.settings import Settings, build_settings
from tests.support.rows import add_queued

FEATURES = {"features": [0.5] * 12}


@dataclass
class Broker:
    """Stands in for the broker: what was published, and the depth it reports."""

    depth_is: int | None = None
    sent: list[tuple[str, list[str]]] = field(default_factory=list)

    def publish(self, model: str, ids: Sequence[str], priority: int) -> None:
        self.sent.append((model, list(ids)))

    def depth(self, model: str) -> int | None:
        return self.depth_is

    def ids(self) -> set[str]:
        out = {i for _, ids in self.sent for i in ids}
        self.sent.clear()
        return out


@pytest.fixture
def settings(pg_url: str, models_dir: Path) -> Settings:
    return build_settings(
        database_url=pg_url, models_dir=models_dir, requeue_after_seconds=60, lease_seconds=30
    )


def sweep(
    sessions: sessionmaker[Session], broker: Broker, settings: Settings, **kw: Any
) -> tuple[set[str], int]:
    report = sweep_predictions(sessions=sessions, publisher=broker, settings=settings, **kw)
    return broker.ids(), report.failed


def ago(seconds: float) -> Any:
    return utcnow() - timedelta(seconds=seconds)


def lost(sessions: sessionmaker[Session], n: int, attempts: int, **kw: Any) -> list[str]:
    """Rows whose worker died: running under a lease that ran out, claimed ``attempts`` times."""
    return add_queued(
        sessions,
        "churn-risk",
        [FEATURES] * n,
        status="running",
        attempts=attempts,
        published_at=ago(20),
        lease_expires_at=ago(1),
        **kw,
    )


@pytest.fixture
def hub(pg_url: str) -> Iterator[CompletionHub]:
    h = CompletionHub(pg_url)
    h.start()
    assert h.connected.wait(10)
    yield h
    h.stop()


def test_a_row_lost_max_attempts_times_ends_worker_lost_with_its_webhook(
    pg_sessions: sessionmaker[Session], settings: Settings, hub: CompletionHub
) -> None:
    (poison,) = lost(pg_sessions, 1, 3, callback_url="http://127.0.0.1:9/hook")
    (again,) = lost(pg_sessions, 1, 2)
    woke = threading.Event()
    hub.subscribe(poison, lambda _: woke.set())
    committed: list[list[crud.Written]] = []
    sent, failed = sweep(
        pg_sessions, Broker(), settings, write_hooks=[write_hook], after_commit=[committed.append]
    )
    assert (failed, sent) == (1, {again})  # the other one runs again (alone)
    with pg_sessions() as s:
        row = s.get(Prediction, poison)
        assert row is not None and (row.status, row.error_code) == ("failed", "worker_lost")
        assert row.error_message is not None
        assert row.error_message.startswith("the worker running it was lost 3 times; ")
        assert row.completed_at is not None and row.lease_expires_at is None
        (delivery,) = s.scalars(select(Delivery)).all()
    assert (delivery.subject_id, delivery.status) == (poison, "pending")
    assert [w.id for w in committed[0]] == [poison]
    assert woke.wait(5), "no NOTIFY for long-polls"
    # a second sweeper (or the same one again) fails nothing twice
    assert sweep(pg_sessions, Broker(), settings, write_hooks=[write_hook])[1] == 0


def test_concurrent_sweepers_fail_each_row_once(
    pg_sessions: sessionmaker[Session], settings: Settings
) -> None:
    ids = lost(pg_sessions, 50, 3)
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda: counts.append(sweep(pg_sessions, Broker(), settings)[1]))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == len(ids)


def test_a_backlog_is_not_copied_while_its_queue_holds_messages(
    pg_sessions: sessionmaker[Session], settings: Settings
) -> None:
    backlog = add_queued(pg_sessions, "churn-risk", [FEATURES] * 20, published_at=ago(300))
    never = add_queued(pg_sessions, "churn-risk", [FEATURES], published_at=None)
    (died,) = lost(pg_sessions, 1, 1)
    broker = Broker(depth_is=5)
    assert sweep(pg_sessions, broker, settings)[0] == {*never, died}  # published: always
    assert sweep(pg_sessions, broker, settings)[0] == set()  # ... and once
    broker.depth_is = None  # the broker cannot say: once per requeue_after, as before
    assert sweep(pg_sessions, broker, settings)[0] == set(backlog)
    assert sweep(pg_sessions, broker, settings)[0] == set()


def test_an_empty_queue_means_the_messages_left_it(
    pg_sessions: sessionmaker[Session], settings: Settings
) -> None:
    old = add_queued(pg_sessions, "churn-risk", [FEATURES] * 3, published_at=ago(300))
    add_queued(pg_sessions, "churn-risk", [FEATURES] * 3, published_at=ago(10))  # too recent
    broker = Broker(depth_is=0)
    assert sweep(pg_sessions, broker, settings)[0] == set(old)
    assert sweep(pg_sessions, broker, settings)[0] == set()  # published again just now


def test_rows_behind_the_delivery_front_are_lost_even_in_a_backlog(
    pg_sessions: sessionmaker[Session], settings: Settings
) -> None:
    behind = add_queued(pg_sessions, "churn-risk", [FEATURES] * 2, published_at=ago(600))
    waiting = add_queued(pg_sessions, "churn-risk", [FEATURES] * 2, published_at=ago(200))
    broker = Broker(depth_is=100)
    assert sweep(pg_sessions, broker, settings)[0] == set()  # nobody runs anything: a backlog
    # a live worker runs one published 160 s ago: FIFO, so what was published 60 s before it
    # left the queue long ago; what was published after that may still wait in it
    add_queued(
        pg_sessions,
        "churn-risk",
        [FEATURES],
        status="running",
        published_at=ago(160),
        lease_expires_at=utcnow() + timedelta(seconds=30),
    )
    add_queued(pg_sessions, "other-model", [FEATURES], status="running", published_at=utcnow())
    assert sweep(pg_sessions, broker, settings)[0] == set(behind)
    assert not set(waiting) & broker.ids()


@pytest.fixture
def pool(pg_sessions: sessionmaker[Session], settings: Settings) -> Iterator[ExecutorPool]:
    p = ExecutorPool(Registry(settings.models_dir), sessions=pg_sessions, settings=settings)
    yield p
    p.stop()


def test_rows_of_a_lost_worker_run_alone_and_only_until_max_attempts(
    pg_sessions: sessionmaker[Session], pool: ExecutorPool
) -> None:
    fresh = add_queued(pg_sessions, "churn-risk", [FEATURES] * 3)
    again = lost(pg_sessions, 3, 1)
    spent = lost(pg_sessions, 1, 3)
    held = lost(pg_sessions, 1, 1)
    with pg_sessions.begin() as s:  # another worker holds this one now
        s.execute(
            update(Prediction)
            .where(Prediction.id == held[0])
            .values(lease_expires_at=utcnow() + timedelta(seconds=30))
        )
    pool.run("churn-risk", [*fresh, *again, *spent, *held])
    with pg_sessions() as s:
        rows = {p.id: p for p in s.scalars(select(Prediction))}
    assert all(rows[i].status == "succeeded" and rows[i].batch_size == 3 for i in fresh)
    assert all(rows[i].status == "succeeded" and rows[i].batch_size == 1 for i in again)
    assert all(rows[i].attempts == 2 for i in again)
    assert (rows[spent[0]].status, rows[spent[0]].attempts) == ("running", 3)  # the sweeper's
    assert (rows[held[0]].status, rows[held[0]].attempts) == ("running", 1)


def test_one_sweep_at_a_time_a_second_leaves_the_work_and_a_recovery_waits(
    pg_sessions: sessionmaker[Session],
) -> None:
    """Two sweeps at once (a sweeper's two threads, one that ran long) split or repeat the
    publish of one backlog: a regular sweep that finds one running does nothing, a recovery
    (``lost_before``) waits for its turn."""
    from app.predictions.sweeper import sweep_turn

    holding, release, waited = threading.Event(), threading.Event(), []

    def hold() -> None:
        with sweep_turn(pg_sessions, wait=False) as mine:
            assert mine
            holding.set()
            release.wait(10)

    def recovery() -> None:
        with sweep_turn(pg_sessions, wait=True) as mine:
            waited.append(mine and release.is_set())

    first = threading.Thread(target=hold)
    first.start()
    assert holding.wait(10)
    with sweep_turn(pg_sessions, wait=False) as mine:
        assert not mine  # another sweep is running: this one leaves the work to it
    second = threading.Thread(target=recovery)
    second.start()
    second.join(0.5)
    assert second.is_alive() and not waited  # the recovery waits ...
    release.set()
    first.join(10)
    second.join(10)
    assert waited == [True]  # ... and runs once the first is done
    with sweep_turn(pg_sessions, wait=False) as mine:
        assert mine  # and the turn is free again
