"""The results store on real Postgres: claims, idempotent writes, the sweeper's view."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import predictions as crud
from app.db import sweeps
from app.db.base import utcnow
from app.db.engine import make_engine, make_sessionmaker, migrate
from app.db.models import Prediction
from app.settings import build_settings
from tests.support.rows import add_queued


@pytest.fixture(params=["postgres", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> sessionmaker[Session]:
    """The store on Postgres and on the embedded SQLite default: the same semantics."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_sessions")  # type: ignore[no-any-return]
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(url)
    return make_sessionmaker(make_engine(build_settings(database_url=url)))


def add(sessions: sessionmaker[Session], n: int, **kw: object) -> list[str]:
    return add_queued(sessions, "m", [{"x": i} for i in range(n)], **kw)


def test_writing_a_result_twice_changes_nothing(store: sessionmaker[Session]) -> None:
    ids = add(store, 3)
    first = [crud.ResultRow(i, "succeeded", {"y": n}, batch_size=3) for n, i in enumerate(ids)]
    with store.begin() as s:
        assert {w.id for w in crud.write_results(session=s, results=first)} == set(ids)
    again = [crud.ResultRow(i, "succeeded", {"y": 99}, batch_size=1) for i in ids]
    with store.begin() as s:
        assert crud.write_results(session=s, results=again) == []
    with store() as s:
        rows = {p.id: p for p in s.scalars(select(Prediction))}
    assert [rows[i].output for i in ids] == [{"y": 0}, {"y": 1}, {"y": 2}]
    assert all(rows[i].batch_size == 3 and rows[i].completed_at for i in ids)


def test_claims_are_exclusive_until_the_lease_runs_out(store: sessionmaker[Session]) -> None:
    ids = add(store, 4)
    with store.begin() as s:
        assert {
            p.id for p in crud.claim(session=s, model="m", ids=ids[:2], lease=timedelta(seconds=60))
        } == set(ids[:2])
    with store.begin() as s:
        assert {
            p.id for p in crud.claim(session=s, model="m", ids=ids, lease=timedelta(seconds=60))
        } == set(ids[2:])
    with store.begin() as s:  # a lease that ran out may be taken over, alone
        s.execute(
            Prediction.__table__.update()
            .where(Prediction.id == ids[0])
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    lease = timedelta(seconds=60)
    with store.begin() as s:
        assert crud.claim(session=s, model="m", ids=ids, lease=lease) == []
        assert crud.lost_ids(session=s, ids=ids, max_attempts=3) == [ids[0]]
        taken = crud.claim_lost(
            session=s, model="m", prediction_id=ids[0], lease=lease, max_attempts=3
        )
        assert taken is not None and taken.id == ids[0]
        assert (
            crud.claim_lost(session=s, model="m", prediction_id=ids[0], lease=lease, max_attempts=3)
            is None
        )


def test_a_claim_takes_only_rows_of_its_model(store: sessionmaker[Session]) -> None:
    """A message on the wrong queue (or naming another model's ids) takes nothing: the rows
    stay queued for their own model's workers instead of running nowhere until the lease ends."""
    ids = add(store, 2)
    lease = timedelta(seconds=60)
    with store.begin() as s:
        assert crud.claim(session=s, model="other", ids=ids, lease=lease) == []
        assert {p.id for p in crud.claim(session=s, model="m", ids=ids, lease=lease)} == set(ids)
        s.execute(
            Prediction.__table__.update()
            .where(Prediction.id == ids[0])
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    with store.begin() as s:
        kw = {"prediction_id": ids[0], "lease": lease, "max_attempts": 3}
        assert crud.claim_lost(session=s, model="other", **kw) is None  # type: ignore[arg-type]
        assert crud.claim_lost(session=s, model="m", **kw) is not None  # type: ignore[arg-type]
    with store() as s:
        assert {p.status for p in s.scalars(select(Prediction))} == {"running"}


def test_cancelled_rows_are_never_claimed_or_overwritten(
    store: sessionmaker[Session],
) -> None:
    (pid,) = add(store, 1)
    with store.begin() as s:
        assert crud.cancel_prediction(session=s, tenant="t", prediction_id=pid)
        assert not crud.cancel_prediction(session=s, tenant="other", prediction_id=pid)
    with store.begin() as s:
        assert crud.claim(session=s, model="m", ids=[pid], lease=timedelta(seconds=5)) == []
        assert crud.write_results(session=s, results=[crud.ResultRow(pid, "succeeded", {})]) == []
    with store() as s:
        assert s.get(Prediction, pid).status == "cancelled"  # type: ignore[union-attr]


def test_sweeper_finds_unpublished_stale_and_orphaned(store: sessionmaker[Session]) -> None:
    now = utcnow()
    fresh = add(store, 1)
    unpublished = add(store, 1, published_at=None)
    old = add(store, 1, published_at=now - timedelta(minutes=10))
    ran_out = now - timedelta(seconds=1)
    orphan = add(
        store,
        1,
        status="running",
        lease_expires_at=ran_out,
        published_at=now - timedelta(seconds=9),
    )
    # published again since its lease ran out: as a queued one, stale after requeue_after
    again = add(store, 1, status="running", lease_expires_at=ran_out, published_at=now)
    held = add(store, 1, status="running", lease_expires_at=now + timedelta(minutes=1))
    with store() as s:
        found = {
            r.id
            for r in sweeps.stale(session=s, now=now, requeue_before=now - timedelta(minutes=2))
        }
    assert found == {*unpublished, *old, *orphan}
    assert not found & {*fresh, *held, *again}


def test_a_late_write_under_a_lost_claim_is_refused(store: sessionmaker[Session]) -> None:
    """The fence: worker A's lease ran out and B claimed the row again; A's result, written
    under its old claim, lands nowhere; B's lands; a write without a claim (a request failed
    before it ran) still lands while the row is live."""
    a_id, other = add(store, 2)
    lease = timedelta(seconds=60)
    with store.begin() as s:
        (a,) = crud.claim(session=s, model="m", ids=[a_id], lease=lease)
        s.execute(
            Prediction.__table__.update()
            .where(Prediction.id == a_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    with store.begin() as s:
        b = crud.claim_lost(session=s, model="m", prediction_id=a_id, lease=lease, max_attempts=3)
    assert b is not None and (a.attempts, b.attempts) == (1, 2)
    late = crud.ResultRow(a_id, "succeeded", {"by": "a"}, claim=a.attempts)
    with store.begin() as s:
        assert crud.write_results(session=s, results=[late]) == []
    with store() as s:
        assert s.get(Prediction, a_id).status == "running"  # type: ignore[union-attr]
    mine = crud.ResultRow(a_id, "succeeded", {"by": "b"}, claim=b.attempts)
    with store.begin() as s:
        assert [w.id for w in crud.write_results(session=s, results=[mine, late])] == [a_id]
    with store.begin() as s:  # and A, later still, changes nothing
        assert crud.write_results(session=s, results=[late]) == []
        unclaimed = crud.ResultRow(other, "failed", error_code="unknown_model", error_message="x")
        assert [w.id for w in crud.write_results(session=s, results=[unclaimed])] == [other]
    with store() as s:
        assert s.get(Prediction, a_id).output == {"by": "b"}  # type: ignore[union-attr]
