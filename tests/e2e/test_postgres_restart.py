"""A Postgres restart under load: callers get a quick ``503`` with ``Retry-After`` while it is
down (never a 500, never a hang), every ``202`` ends ``succeeded``, the worker and beat
reconnect by themselves, and no webhook is sent twice.

The database is the test's own (``tests.support.brokers.PrivatePostgres``), stopped with a
fast shutdown as ``pg_ctl restart -m fast`` would. The figures are printed (``-s``) and
written to ``postgres-restart.json`` in the test's folder.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.deliveries import Delivery
from app.db.engine import make_engine, make_sessionmaker, migrate
from app.db.models import Prediction
from app.delivery.webhook import DELIVERY_HEADER
from app.settings import build_settings
from tests.conftest import StackFactory
from tests.support.brokers import PrivatePostgres, available
from tests.support.receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CLIENTS = 4
HANG_S = 10.0
"""The longest a POST may take while the database is away (the engine's connect timeout is
3 s; a refused connection fails at once)."""


def test_a_postgres_restart_under_load_costs_503s_and_nothing_else(
    redis_url: str, models_dir: Path, receiver: Receiver, tmp_path: Path
) -> None:
    reason = available("postgres")
    if reason:
        pytest.skip(reason)
    pg = PrivatePostgres(tmp_path / "pg")
    pg.start()
    factory = StackFactory(pg.url, models_dir, tmp_path)
    engine = None
    try:
        migrate(pg.url)
        engine = make_engine(build_settings(database_url=pg.url), pool_size=2)
        sessions: sessionmaker[Session] = make_sessionmaker(engine)
        stack = factory(redis_url, beat=True, workers=1)
        accepted: list[str] = []
        answers: collections.Counter[int] = collections.Counter()
        no_retry_after = 0
        slowest = 0.0
        lock = threading.Lock()
        stop = threading.Event()

        def client(n: int) -> None:
            nonlocal no_retry_after, slowest
            with stack.client() as c:
                i = 0
                while not stop.is_set():
                    i += 1
                    body = {
                        "model": "churn-risk",
                        "input": {"features": [float((n + i) % 9)] * 12},
                        "callback_url": receiver.url,
                    }
                    t = time.monotonic()
                    try:
                        r = c.post("/v1/predictions", json=body, timeout=30)
                        code = r.status_code
                    except httpx.HTTPError:
                        code = 0
                    took = time.monotonic() - t
                    with lock:
                        slowest = max(slowest, took)
                        answers[code] += 1
                        if code == 202:
                            accepted.append(r.json()["id"])
                        elif code == 503:
                            no_retry_after += "retry-after" not in r.headers
                            time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(3.0)
        pg.stop()  # a fast shutdown: sessions are cut, in-flight transactions roll back
        time.sleep(1.0)
        back = pg.start()
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(40)
        ids = list(accepted)

        def live() -> int:
            with sessions() as s:
                return int(
                    s.execute(
                        select(func.count()).where(Prediction.status.in_(("queued", "running")))
                    ).scalar_one()
                )

        end = time.monotonic() + 90
        while live():
            assert time.monotonic() < end, f"{live()} of {len(ids)} not final 90 s after"
            time.sleep(0.05)
        recovery_s = time.monotonic() - back

        with sessions() as s:
            statuses = dict(
                s.execute(select(Prediction.status, func.count()).group_by(Prediction.status)).all()
            )
            deliveries = collections.Counter(s.scalars(select(Delivery.subject_id)).all())
            last = s.execute(
                select(
                    Prediction.created_at,
                    Prediction.published_at,
                    Prediction.started_at,
                    Prediction.completed_at,
                    Prediction.attempts,
                )
                .order_by(Prediction.completed_at.desc())
                .limit(3)
            ).all()
        assert statuses == {"succeeded": len(ids)}, statuses
        assert set(answers) <= {202, 503}, answers  # never a 500, never a dropped connection
        assert answers[503] > 0, "the outage was not seen"
        assert no_retry_after == 0 and slowest < HANG_S, (no_retry_after, slowest)
        assert len(deliveries) == len(ids) and set(deliveries.values()) == {1}
        got = receiver.wait_for(
            lambda rs: len({r.json()["id"] for r in rs}) >= len(ids), timeout=60
        )
        time.sleep(2.0)  # a second send would come now, if at all
        sends: collections.Counter[str] = collections.Counter()
        delivery_ids: dict[str, set[str]] = collections.defaultdict(set)
        for r in list(receiver.requests):
            pid = r.json()["id"]
            sends[pid] += 1
            delivery_ids[pid].add(r.headers[DELIVERY_HEADER.lower()])
        assert len(got) >= len(ids)
        assert all(len(v) == 1 for v in delivery_ids.values())  # a repeat keeps its id
        twice = sum(1 for n in sends.values() if n > 1)
        figures = {
            "accepted": len(ids),
            "answers": {str(k): v for k, v in sorted(answers.items())},
            "slowest_post_s": round(slowest, 2),
            "final_after_postgres_back_s": round(recovery_s, 2),
            "webhooks_sent_twice": twice,
            "last_final": [[str(v) for v in row] for row in last],
        }
        print(json.dumps(figures))
        (tmp_path / "postgres-restart.json").write_text(json.dumps(figures, indent=2))
        assert twice == 0, figures
    finally:
        factory.close(show_logs=False)
        if engine is not None:
            engine.dispose()
        pg.close()
