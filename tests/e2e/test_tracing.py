"""One trace id from the POST to the webhook: through the API's logs, the stored row, the broker
message, the worker's batch and result write, the dispatcher and the webhook's ``traceparent``;
a bulk job's chunks in the trace of the POST that made it."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import tracing
from app.db.models import Prediction
from tests.conftest import StackFactory
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow

CALLER = tracing.TraceContext("5e1f0c2d9a8b47c6b3a2f1e0d9c8b7a6", "a1b2c3d4e5f60718")


def _lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def _wait_for_line(log: Path, match: Any, timeout: float = 20) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in _lines(log):
            if match(line):
                return line
        time.sleep(0.1)
    raise AssertionError(f"no matching line in {log}:\n{log.read_text(errors='replace')[-3000:]}")


def test_one_trace_id_from_the_post_to_the_webhook(
    make_stack: StackFactory,
    redis_url: str,
    receiver: Receiver,
    pg_sessions: sessionmaker[Session],
) -> None:
    stack = make_stack(redis_url, log_level="DEBUG")
    trace = CALLER.trace_id
    with stack.client() as c:
        r = c.post(
            "/v1/predictions",
            json={
                "model": "churn-risk",
                "input": {"features": [1.0] * 12},
                "callback_url": f"{receiver.url}/hook",
            },
            headers={"traceparent": CALLER.header},
        )
        assert r.status_code == 202, r.text
        answered = tracing.parse(r.headers["traceparent"])
        assert answered is not None and answered.trace_id == trace
        assert answered.span_id != CALLER.span_id  # the API's own span, a child of the caller's
        pid = r.json()["id"]

        (hook,) = receiver.wait_for(lambda reqs: len(reqs) == 1)
        sent = tracing.parse(hook.headers["traceparent"])
        assert sent is not None and sent.trace_id == trace
        assert hook.json()["id"] == pid

        # a request without a traceparent gets a trace of its own
        other = c.post(
            "/v1/predictions", json={"model": "churn-risk", "input": {"features": [2.0] * 12}}
        )
        fresh = tracing.parse(other.headers["traceparent"])
        assert fresh is not None and fresh.trace_id != trace

    with pg_sessions() as s:
        stored = s.scalar(select(Prediction.traceparent).where(Prediction.id == pid))
    assert stored == answered.header

    api_log = stack.tmp / "api.log"
    (worker_log,) = stack.tmp.glob("worker0-*.log")
    line = _wait_for_line(
        api_log,
        lambda x: (
            x.get("msg") == "request"
            and x.get("path") == "/v1/predictions"
            and x.get("trace_id") == trace
        ),
    )
    assert line["span_id"] == answered.span_id
    # the broker message carried it ...
    _wait_for_line(worker_log, lambda x: x.get("msg") == "message" and x.get("trace_id") == trace)
    # ... the batch and its result write were in it ...
    _wait_for_line(
        worker_log,
        lambda x: (
            x.get("msg") == "results stored"
            and x.get("trace_id") == trace
            and trace in x.get("trace_ids", [])
        ),
    )
    # ... and so was the webhook's delivery, whose span the header names
    line = _wait_for_line(
        worker_log, lambda x: x.get("msg") == "delivery attempt" and x.get("trace_id") == trace
    )
    assert line["span_id"] == sent.span_id and line["status_code"] == 200


def test_a_jobs_chunks_run_in_the_trace_of_its_post(
    make_stack: StackFactory, redis_url: str
) -> None:
    stack = make_stack(redis_url)
    with stack.client() as c:
        r = c.post(
            "/v1/jobs",
            json={"model": "churn-risk", "inputs": [{"features": [0.5] * 12}] * 3},
            headers={"traceparent": CALLER.header},
        )
        assert r.status_code == 202, r.text
        assert tracing.parse(r.headers["traceparent"]).trace_id == CALLER.trace_id  # type: ignore[union-attr]
    (worker_log,) = stack.tmp.glob("worker0-*.log")
    line = _wait_for_line(
        worker_log, lambda x: x.get("msg") == "job chunk" and x.get("job") == r.json()["id"]
    )
    assert line["trace_id"] == CALLER.trace_id
