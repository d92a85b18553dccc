"""OpenTelemetry spans through the worker's in-process path, recorded by the SDK's in-memory
exporter: request spans in their callers' traces, one batch span linking them, the result write
under the batch, the webhook under the request with ``traceparent`` on the wire."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import tracing
from app.db.deliveries import Delivery
from app.db.models import Prediction
from app.delivery import webhook
from app.delivery.engine import build_dispatcher
from app.predictions.executor import ExecutorPool
from app.registry import Registry
from app.settings import build_settings
from tests.support.receiver import Receiver
from tests.support.rows import add_queued

sdk = pytest.importorskip(
    "opentelemetry.sdk.trace", reason="the OpenTelemetry SDK is not installed (inferq[otel])"
)
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind  # noqa: E402

A = tracing.TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
B = tracing.TraceContext("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    tracing.install(provider)
    yield exp
    tracing.install(None)
    provider.shutdown()


def _hex(n: int, width: int) -> str:
    return f"{n:0{width}x}"


def _by_name(spans: Any, prefix: str) -> list[Any]:
    return [s for s in spans if s.name.startswith(prefix)]


def test_a_batch_span_links_the_request_spans_it_carried(
    pg_url: str,
    pg_sessions: sessionmaker[Session],
    models_dir: Path,
    receiver: Receiver,
    exporter: InMemorySpanExporter,
) -> None:
    settings = build_settings(database_url=pg_url, models_dir=models_dir, egress_allow="127.0.0.1")
    dispatcher = build_dispatcher(pg_sessions, settings)
    pool = ExecutorPool(
        Registry(models_dir),
        sessions=pg_sessions,
        settings=settings,
        write_hooks=[webhook.write_hook],
        after_commit=[dispatcher.send_pending],
    )
    try:
        ex = pool.get("churn-risk")
        ex.batcher.max_delay = 0.5  # both requests surely in one batch
        ids = [
            add_queued(
                pg_sessions,
                "churn-risk",
                [{"features": [0.1] * 12}],
                traceparent=ctx.header,
                callback_url=f"{receiver.url}/hook",
            )[0]
            for ctx in (A, B)
        ]
        (report,) = pool.run("churn-risk", ids)
        assert report.statuses == {"succeeded": 2}
        got = receiver.wait_for(lambda reqs: len(reqs) == 2)
        deadline = time.monotonic() + 10
        while len(_by_name(exporter.get_finished_spans(), "inferq.deliver")) < 2:
            assert time.monotonic() < deadline, "delivery spans not ended"
            time.sleep(0.05)
    finally:
        pool.stop()
        dispatcher.close()

    spans = exporter.get_finished_spans()
    requests = _by_name(spans, "inferq.request")
    assert len(requests) == 2
    by_trace = {_hex(s.context.trace_id, 32): s for s in requests}
    assert set(by_trace) == {A.trace_id, B.trace_id}
    for ctx in (A, B):  # each request's span is a child of its caller's span
        span = by_trace[ctx.trace_id]
        assert span.parent is not None and _hex(span.parent.span_id, 16) == ctx.span_id
        assert span.kind == SpanKind.CONSUMER
        assert span.attributes["inferq.status"] == "succeeded"

    (batch,) = _by_name(spans, "inferq.batch")
    assert batch.name == "inferq.batch churn-risk"
    assert batch.attributes["inferq.batch_size"] == 2
    linked = {(lk.context.trace_id, lk.context.span_id) for lk in batch.links}
    assert linked == {(s.context.trace_id, s.context.span_id) for s in requests}
    assert batch.parent is None  # two traces: the batch starts its own, linked to both
    assert batch.context.trace_id not in {s.context.trace_id for s in requests}

    (store,) = _by_name(spans, "inferq.store")
    assert store.context.trace_id == batch.context.trace_id
    assert store.parent is not None and store.parent.span_id == batch.context.span_id

    # the webhook: a client span under the request's caller, its id on the wire
    delivers = _by_name(spans, "inferq.deliver")
    assert {_hex(s.context.trace_id, 32) for s in delivers} == {A.trace_id, B.trace_id}
    sent = {tracing.parse(r.headers["traceparent"]) for r in got}
    assert sent == {
        tracing.TraceContext(_hex(s.context.trace_id, 32), _hex(s.context.span_id, 16))
        for s in delivers
    }
    with pg_sessions() as s:
        stored = dict(s.execute(select(Delivery.subject_id, Delivery.traceparent)).all())
        rows = dict(s.execute(select(Prediction.id, Prediction.traceparent)).all())
    assert stored == rows == {ids[0]: A.header, ids[1]: B.header}


def test_a_batch_of_one_trace_is_a_child_in_that_trace(
    pg_url: str,
    pg_sessions: sessionmaker[Session],
    models_dir: Path,
    exporter: InMemorySpanExporter,
) -> None:
    settings = build_settings(database_url=pg_url, models_dir=models_dir)
    pool = ExecutorPool(Registry(models_dir), sessions=pg_sessions, settings=settings)
    try:
        ex = pool.get("churn-risk")
        ex.batcher.max_delay = 0.5
        ids = add_queued(
            pg_sessions, "churn-risk", [{"features": [0.2] * 12}] * 2, traceparent=A.header
        )
        with tracing.span("message", parent=A):
            pool.run("churn-risk", ids)
    finally:
        pool.stop()
    spans = exporter.get_finished_spans()
    (batch,) = _by_name(spans, "inferq.batch")
    assert _hex(batch.context.trace_id, 32) == A.trace_id
    assert len(batch.links) == 2
    assert {_hex(s.context.trace_id, 32) for s in spans} == {A.trace_id}


def test_without_an_exporter_nothing_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert not tracing.configure("", service="test")  # no exporter asked for
    assert not tracing.configure("none", service="test")
    assert not tracing.enabled()
