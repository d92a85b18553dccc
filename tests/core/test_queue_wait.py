"""A request's time in the broker counts against its model's ``max_delay_ms`` (or not, when
``count_queue_wait`` is off): what the executor hands the batcher for rows it claims."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.batching import BatchItem
from app.db import predictions as crud
from app.db.base import utcnow
from app.db.models import Prediction
from app.predictions.executor import ExecutorPool
from app.registry import Registry
from app.settings import build_settings
from tests.support.rows import add_queued


def add(sessions: sessionmaker[Session], created_ago: list[float]) -> list[str]:
    now = utcnow()
    return [
        add_queued(
            sessions,
            "churn-risk",
            [{"features": [0.1] * 12}],
            created_at=now - timedelta(seconds=ago),
        )[0]
        for ago in created_ago
    ]


@pytest.mark.parametrize("count", [True, False])
def test_the_executor_tells_the_batcher_how_long_each_request_waited(
    pg_url: str, pg_sessions: sessionmaker[Session], models_dir: Path, count: bool
) -> None:
    settings = build_settings(database_url=pg_url, models_dir=models_dir, count_queue_wait=count)
    pool = ExecutorPool(Registry(models_dir), sessions=pg_sessions, settings=settings)
    try:
        ex = pool.get("churn-risk")
        seen: dict[str, float] = {}
        submit = ex.batcher.submit

        def spy(item: BatchItem, *, waited: float = 0.0) -> object:
            seen[item.key] = waited
            return submit(item, waited=waited)

        ex.batcher.submit = spy  # type: ignore[method-assign,assignment]
        old, fresh, ahead = add(pg_sessions, [3.0, 0.0, -5.0])  # ahead: a clock that runs fast
        reports = pool.run("churn-risk", [old, fresh, ahead])
        assert reports[0].statuses == {"succeeded": 3}
        with pg_sessions() as s:
            assert set(s.scalars(select(Prediction.status))) == {"succeeded"}
        if count:
            assert 3.0 <= seen[old] < 60
            assert 0.0 <= seen[fresh] < 60
            assert seen[ahead] < -4  # passed on as it is; the batcher counts it as no wait
        else:
            assert seen == {old: 0.0, fresh: 0.0, ahead: 0.0}
    finally:
        pool.stop()


def test_claim_returns_when_each_request_was_accepted(pg_sessions: sessionmaker[Session]) -> None:
    (pid,) = add(pg_sessions, [7.0])
    with pg_sessions.begin() as s:
        (row,) = crud.claim(session=s, model="churn-risk", ids=[pid], lease=timedelta(seconds=30))
    assert row.created_at is not None
    assert 6.5 <= (utcnow() - row.created_at).total_seconds() < 60
