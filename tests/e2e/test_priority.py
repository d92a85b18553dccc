"""Priority across the broker: a ``high`` request submitted behind 10,000 queued ``low`` ones of
the same model starts within a few batches, not after the backlog.

Without the claim's pull (``app.db.predictions._PG_CLAIM``) its message waits behind every
message the worker reserved and every one still in the broker: ~8,000 ``low`` requests would
run first. The figures are printed (``-s``).
"""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import PRIORITIES, Prediction
from tests.conftest import StackFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BACKLOG = 10_000
PER_POST = 100


def test_a_high_request_overtakes_a_backlog_of_low_ones_in_the_broker(
    make_stack: StackFactory, redis_url: str, pg_sessions: sessionmaker[Session]
) -> None:
    stack = make_stack(redis_url, workers=0)
    with stack.client() as c:
        for start in range(0, BACKLOG, PER_POST):
            r = c.post(
                "/v1/predictions",
                json={
                    "model": "minilm-embed",
                    "priority": "low",
                    "inputs": [
                        {"text": f"backlog item {i}"} for i in range(start, start + PER_POST)
                    ],
                },
            )
            assert r.status_code == 202, r.text
        stack.start_worker()
        low = PRIORITIES["low"]

        def started(cond: object = None) -> int:
            with pg_sessions() as s:
                q = select(func.count()).where(
                    Prediction.priority == low, Prediction.started_at.is_not(None)
                )
                return int(s.execute(q).scalar_one())

        end = time.monotonic() + 60
        while started() == 0:  # the worker holds the backlog's first messages
            assert time.monotonic() < end, "the worker did not start"
            time.sleep(0.05)
        time.sleep(0.5)
        r = c.post(
            "/v1/predictions",
            json={"model": "minilm-embed", "priority": "high", "input": {"text": "urgent"}},
        )
        assert r.status_code == 202
        hid = r.json()["id"]
        t = time.monotonic()
        while True:
            body = c.get(f"/v1/predictions/{hid}", params={"wait": 30}).json()
            if body.get("status") not in ("queued", "running") or time.monotonic() - t > 90:
                break
        waited = time.monotonic() - t
        assert body.get("status") == "succeeded", body
    with pg_sessions() as s:
        high = s.get(Prediction, hid)
        assert high is not None and high.started_at is not None
        ahead = int(
            s.execute(
                select(func.count()).where(
                    Prediction.priority == low,
                    Prediction.started_at > high.created_at,
                    Prediction.started_at <= high.started_at,
                )
            ).scalar_one()
        )
        waiting = int(
            s.execute(
                select(func.count()).where(
                    Prediction.priority == low, Prediction.status == "queued"
                )
            ).scalar_one()
        )
        # end the rest of the backlog here (the test's point is made)
        s.execute(
            update(Prediction)
            .where(Prediction.status.in_(("queued", "running")))
            .values(status="cancelled")
        )
        s.commit()
    figures = {
        "backlog": BACKLOG,
        "low_still_queued_when_high_started": waiting,
        "low_started_after_high_was_accepted_and_before_it": ahead,
        "high_final_after_s": round(waited, 2),
    }
    print(json.dumps(figures))
    assert waiting > BACKLOG // 2, figures  # the backlog was really there
    assert ahead < 1000, figures  # a few batches (minilm-embed: up to 64 a batch), not ~8,000
