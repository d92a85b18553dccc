"""The purge of a large table runs beside live traffic on real Postgres: while it deletes
200,000 expired predictions in batches, submissions, claims and result writes go on, none
waits on it, and it reports what it deleted."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.db import predictions as crud
from app.db.engine import session_scope
from app.db.models import Prediction
from app.predictions import service
from app.purge import PurgeReport, purge
from app.registry import Registry
from app.settings import build_settings

EXPIRED = 200_000
BOUND_S = 5.0


class NoBroker:
    def publish(self, model: str, ids: Sequence[str], priority: int) -> None:
        pass


def test_submit_and_claim_are_not_blocked_while_a_large_purge_runs(
    pg_url: str, pg_sessions: sessionmaker[Session], models_dir: Path
) -> None:
    engine = pg_sessions.kw["bind"]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO predictions (id, tenant, model, model_version, status, priority,"
                " input, output, created_at, completed_at, attempts, expires_at)"
                " SELECT 'old_' || i, 't', 'churn-risk', '1', 'succeeded', 1,"
                " CAST('{\"features\": [1,2,3,4,5,6,7,8,9,10,11,12]}' AS jsonb),"
                " CAST('{\"risk\": 0.5}' AS jsonb), now() - interval '8 days',"
                " now() - interval '8 days', 1, now() - interval '1 day'"
                " FROM generate_series(1, :n) AS i"
            ),
            {"n": EXPIRED},
        )
    settings = build_settings(database_url=pg_url, models_dir=models_dir)
    registry = Registry(models_dir)
    reports: list[PurgeReport] = []
    purger = threading.Thread(
        target=lambda: reports.append(purge(engine=engine, settings=settings)), daemon=True
    )
    timings: list[float] = []
    done: list[str] = []
    purger.start()
    while purger.is_alive() or len(timings) < 20:
        start = time.perf_counter()
        sub = service.Submission(
            tenant="t", model="churn-risk", inputs=[{"features": [0.5] * 12}], ttl_s=3600
        )
        service.prepare(sub, registry=registry, settings=settings, now=service.now())
        service.store_and_publish([sub], sessions=pg_sessions, publisher=NoBroker())
        (pid,) = [r["id"] for r in sub.rows]
        with session_scope(pg_sessions) as s:
            (claimed,) = crud.claim(
                session=s, model="churn-risk", ids=[pid], lease=timedelta(seconds=30)
            )
            crud.write_results(
                session=s, results=[crud.ResultRow(claimed.id, "succeeded", {"risk": 0.1})]
            )
        timings.append(time.perf_counter() - start)
        done.append(pid)
    purger.join(timeout=120)

    (report,) = reports
    assert report.complete and report.deleted["predictions"] == EXPIRED
    assert max(timings) < BOUND_S, f"slowest submit+claim+write: {max(timings):.2f} s"
    with pg_sessions() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == len(done)
        statuses = set(s.scalars(select(Prediction.status).where(Prediction.id.in_(done))).all())
    assert statuses == {"succeeded"}
    print(
        f"purged {EXPIRED} rows in {report.seconds:.1f} s beside {len(timings)} submit+claim+"
        f"write rounds (slowest {max(timings) * 1000:.0f} ms)"
    )
