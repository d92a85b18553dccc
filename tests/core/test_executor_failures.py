"""Predictions that end in a worker without running (bad input, a model it cannot serve) end
like every other one: webhook outbox row, NOTIFY for long-polls, after-commit hooks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import predictions as crud
from app.db.deliveries import Delivery
from app.db.models import Prediction
from app.delivery.webhook import write_hook
from app.notify import CompletionHub
from app.predictions.executor import ExecutorPool
from app.registry import Registry
from app.settings import build_settings
from tests.support.rows import add_queued


@pytest.fixture
def hub(pg_url: str) -> Iterator[CompletionHub]:
    h = CompletionHub(pg_url)
    h.start()
    assert h.connected.wait(10)
    yield h
    h.stop()


def add(sessions: sessionmaker[Session], model: str, inputs: list[dict]) -> list[str]:  # type: ignore[type-arg]
    return add_queued(sessions, model, inputs, callback_url="http://127.0.0.1:9/hook")


class Seen:
    def __init__(self, hub: CompletionHub, ids: list[str]) -> None:
        self.notified: set[str] = set()
        self.all = threading.Event()
        self.ids = set(ids)
        for pid in ids:
            hub.subscribe(pid, self._got)

    def _got(self, pid: str) -> None:
        self.notified.add(pid)
        if self.notified >= self.ids:
            self.all.set()


@pytest.fixture
def pool(
    pg_url: str, pg_sessions: sessionmaker[Session], models_dir: Path
) -> Iterator[tuple[ExecutorPool, list[list[crud.Written]]]]:
    committed: list[list[crud.Written]] = []
    p = ExecutorPool(
        Registry(models_dir),
        sessions=pg_sessions,
        settings=build_settings(database_url=pg_url, models_dir=models_dir),
        write_hooks=[write_hook],
        after_commit=[committed.append],
    )
    yield p, committed
    p.stop()


def test_an_input_the_tokenizer_refuses_fails_alone_and_is_announced(
    pool: tuple[ExecutorPool, list[list[crud.Written]]],
    pg_sessions: sessionmaker[Session],
    hub: CompletionHub,
) -> None:
    executors, committed = pool
    good, bad = add(pg_sessions, "minilm-embed", [{"text": "hello"}, {"text": 42}])
    seen = Seen(hub, [good, bad])
    executors.run("minilm-embed", [good, bad])
    with pg_sessions() as s:
        rows = {p.id: p for p in s.scalars(select(Prediction)).all()}
        outbox = set(s.scalars(select(Delivery.subject_id)).all())
    assert rows[good].status == "succeeded"
    assert rows[bad].status == "failed" and rows[bad].error_code == "invalid_input"
    assert outbox == {good, bad}  # both get their webhook
    assert bad in {w.id for batch in committed for w in batch}  # handed to the dispatcher
    assert seen.all.wait(10), f"no NOTIFY for {seen.ids - seen.notified}"


def test_a_model_this_worker_cannot_serve_fails_its_requests_with_webhooks(
    pool: tuple[ExecutorPool, list[list[crud.Written]]],
    pg_sessions: sessionmaker[Session],
    hub: CompletionHub,
) -> None:
    executors, committed = pool
    ids = add(pg_sessions, "gone-model", [{"x": 1}, {"x": 2}])
    seen = Seen(hub, ids)
    written = executors.fail(ids, code="unknown_model", message="unknown model 'gone-model'")
    assert sorted(w.id for w in written) == sorted(ids)
    assert executors.fail(ids, code="unknown_model", message="again") == []  # once only
    with pg_sessions() as s:
        rows = s.scalars(select(Prediction)).all()
        outbox = s.scalars(select(Delivery.subject_id)).all()
    assert {(p.status, p.error_code) for p in rows} == {("failed", "unknown_model")}
    assert sorted(outbox) == sorted(ids)
    assert sorted(w.id for w in committed[0]) == sorted(ids)
    assert seen.all.wait(10)
