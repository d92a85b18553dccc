"""The worker metrics' recording points (``app.metrics``) and the queue gauges (``app.queue_stats``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.batching import BatchItem, DynamicBatcher
from app.db.base import utcnow
from app.queue_stats import QueueStats, read
from tests.batching.test_batcher import Clock, Stub
from tests.support.rows import add_queued


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_batcher_observer_counts_waits_runs_and_outcomes() -> None:
    clock, stub = Clock(), Stub()
    model = "m-observer"
    mm = metrics.ModelMetrics(model)
    stored: list[Any] = []
    b = DynamicBatcher(
        stub,
        max_batch_size=4,
        max_delay_ms=10,
        clock=clock,
        observer=mm,
        sink=lambda items, outs: (
            stored.extend(outs),
            mm.ended((o.status, o.error_code) for o in outs),
        ),
    )
    items = [BatchItem(f"k{i}", i, length=1 + i) for i in range(3)]
    items[0].accepted_at = clock() - 2.0  # waited 2 s in the broker
    items.append(BatchItem("bad", "boom", length=2))
    for it in items:
        b.submit(it)
    clock.advance(0.5)
    batch = b.take_batch()
    assert batch is not None and len(batch) == 4
    b.process(batch)
    assert sample("inferq_queue_wait_seconds_count", model=model) == 4
    # 2.5 s for the one accepted earlier, 0.5 s for each of the others
    assert abs(sample("inferq_queue_wait_seconds_sum", model=model) - 4.0) < 1e-6
    # the batch of 4 failed (not observed), then bisected: [0, 1] ran, [2, boom] failed, [2] ran
    assert sample("inferq_batch_size_count", model=model) == 2
    assert sample("inferq_batch_size_sum", model=model) == 3
    assert sample("inferq_batch_padded_tokens_sum", model=model) == 2 * 2 + 3
    assert sample("inferq_batch_run_seconds_count", model=model) == 2
    ok = sample("inferq_items_total", model=model, outcome="succeeded", code="")
    failed = sample("inferq_items_total", model=model, outcome="failed", code="inference_failed")
    assert (ok, failed) == (3, 1)


def test_sweeper_and_delivery_counters() -> None:
    class Row:
        def __init__(self, pid: str, due: bool, published: bool) -> None:
            self.id, self.due = pid, due
            self.published_at = utcnow() if published else None

    stale = [Row("a", True, True), Row("b", True, False), Row("c", False, True)]
    metrics.swept(stale, [("a", "m-sweep", 1), ("b", "m-sweep", 1), ("c", "m-sweep", 1)])
    assert sample("inferq_sweeper_republished_total", model="m-sweep") == 3
    assert sample("inferq_lease_expiries_total", model="m-sweep") == 1  # "a": a lost worker

    before = sample("inferq_delivery_lag_seconds_count", kind="k-test")
    now = utcnow()
    metrics.delivery_attempt("k-test", ok=False, final=False, created_at=now)
    metrics.delivery_attempt("k-test", ok=True, final=True, created_at=now - timedelta(seconds=3))
    metrics.delivery_attempt("k-test", ok=False, final=True, created_at=now)
    for outcome in ("retry", "delivered", "dead"):
        assert sample("inferq_delivery_attempts_total", kind="k-test", outcome=outcome) == 1
    assert sample("inferq_delivery_lag_seconds_count", kind="k-test") == before + 1
    assert sample("inferq_delivery_lag_seconds_sum", kind="k-test") >= 3


def test_queue_gauges_from_postgres(pg_sessions: sessionmaker[Session]) -> None:
    old = utcnow() - timedelta(seconds=90)
    add_queued(pg_sessions, "churn-risk", [{"features": [1.0]}] * 3, created_at=old)
    add_queued(pg_sessions, "churn-risk", [{"features": [1.0]}] * 2, status="running")
    add_queued(pg_sessions, "minilm-embed", [{"text": "x"}], status="succeeded")
    with pg_sessions() as s:
        queues = read(s)
    assert queues["churn-risk"].queued == 3 and queues["churn-risk"].running == 2
    assert "minilm-embed" not in queues

    stats = QueueStats()
    assert all(not f.samples for f in stats.collect())  # not attached: no query, nothing
    stats.attach(pg_sessions, ttl=60, models=["minilm-embed"])
    got = {(s.name, s.labels["model"]): s.value for f in stats.collect() for s in f.samples}
    assert got[("inferq_queued_inputs", "churn-risk")] == 3
    assert got[("inferq_running_inputs", "churn-risk")] == 2
    assert 89 < got[("inferq_queue_oldest_age_seconds", "churn-risk")] < 120
    assert got[("inferq_queued_inputs", "minilm-embed")] == 0  # a known model with nothing
    add_queued(pg_sessions, "churn-risk", [{"features": [1.0]}])
    cached = {(s.name, s.labels["model"]): s.value for f in stats.collect() for s in f.samples}
    assert cached[("inferq_queued_inputs", "churn-risk")] == 3  # within the ttl: not read again
