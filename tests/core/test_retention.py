"""Retention: the policy (per kind, per tenant, per request, capped), the purge on Postgres and
on SQLite (what is final and past its expiry goes, children first; nothing live goes; a file
goes only once no kept batch refers to it), and the dispatcher's expiry of a delivery once it is
final."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app import retention
from app.db.base import utcnow
from app.db.batches import Batch
from app.db.deliveries import Delivery, DeliveryAttempt
from app.db.engine import make_engine, make_sessionmaker, migrate, session_scope
from app.db.files import File, FilePart
from app.db.integrations import Integration, IntegrationEvent
from app.db.jobs import Job, JobChunk
from app.db.models import Prediction
from app.delivery import outbox
from app.errors import InvalidInput
from app.purge import purge
from app.retention import Kind
from app.settings import Settings, build_settings
from tests.delivery.test_dispatcher import make, settled, webhook_for
from tests.support.receiver import Receiver
from tests.support.rows import add_queued

NOW = utcnow()
PAST, FUTURE = NOW - timedelta(hours=1), NOW + timedelta(days=1)
TABLES = (Prediction, Job, JobChunk, Delivery, DeliveryAttempt, IntegrationEvent, File, FilePart,
          Batch)  # fmt: skip


# --- the policy ----------------------------------------------------------------------------


def test_retention_per_kind_per_tenant_and_per_request_within_the_cap() -> None:
    s = build_settings(
        retention_jobs_seconds=3600,
        tenant_retention={"vip": {"predictions": 90 * 86_400, "max_ttl": 60}},
    )
    assert retention.retention_s(s, Kind.predictions, "t") == 7 * 86_400
    assert retention.retention_s(s, Kind.predictions, "vip") == 90 * 86_400
    assert retention.retention_s(s, Kind.jobs, "vip") == 3600  # a key left out: the default
    assert retention.expires_at(s, Kind.jobs, "t", NOW) == NOW + timedelta(hours=1)
    assert retention.expires_at(s, Kind.jobs, "t", NOW, 120) == NOW + timedelta(minutes=2)
    assert retention.expires_at(s, Kind.jobs, "t", NOW, 30 * 86_400) == NOW + timedelta(days=30)
    with pytest.raises(InvalidInput) as over:
        retention.expires_at(s, Kind.predictions, "t", NOW, 30 * 86_400 + 1)
    assert over.value.code == "ttl_too_long" and "30 days" in over.value.message
    with pytest.raises(InvalidInput, match=r"\(0, 60\]"):  # the tenant's own cap
        retention.expires_at(s, Kind.predictions, "vip", NOW, 61)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InvalidInput):
            retention.expires_at(s, Kind.predictions, "t", NOW, bad)


def test_tenant_retention_is_checked_when_settings_are_read() -> None:
    with pytest.raises(ValidationError, match="unknown keys"):
        build_settings(tenant_retention={"t": {"prediction": 60}})
    with pytest.raises(ValidationError, match="positive number"):
        build_settings(tenant_retention={"t": {"jobs": 0}})
    with pytest.raises(ValidationError):
        build_settings(retention_predictions_seconds=0)


def test_expired_means_final_and_past_its_expiry_and_the_404_says_how_long() -> None:
    assert retention.is_expired(True, PAST, NOW)
    assert not retention.is_expired(False, PAST, NOW)  # live: never expired
    assert not retention.is_expired(True, FUTURE, NOW)
    assert not retention.is_expired(True, None, NOW)  # a pending delivery
    assert [retention.human(x) for x in (86_400, 7 * 86_400, 7200, 90, 61.5)] == [
        "1 day",
        "7 days",
        "2 hours",
        "90 seconds",
        "61.5 seconds",
    ]
    s = build_settings(tenant_retention={"t": {"jobs": 3 * 86_400}})
    err = retention.not_found(s, Kind.jobs, "job_x", "t")
    assert err.code == "not_found"
    assert err.message == (
        "job job_x not found (jobs are kept for 3 days after they are created, unless the "
        "request set ttl_s)"
    )


# --- the purge -------------------------------------------------------------------------------


@pytest.fixture(params=["postgres", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """Sessions on an emptied Postgres database, or on a fresh SQLite file."""
    if request.param == "postgres":
        yield request.getfixturevalue("pg_sessions")
        return
    url = f"sqlite:///{tmp_path / 'purge.db'}"
    migrate(url)
    engine = make_engine(build_settings(database_url=url))
    yield make_sessionmaker(engine)
    engine.dispose()


def _fill(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Objects of every kind: expired ones (to go) beside live or unexpired ones (to stay)."""
    ids: dict[str, Any] = {}
    q = [{"features": [1.0] * 12}]
    ids["p_gone"] = add_queued(sessions, "m", q * 3, status="succeeded", expires_at=PAST)
    ids["p_live"] = add_queued(sessions, "m", q, status="queued", expires_at=PAST)
    ids["p_kept"] = add_queued(sessions, "m", q, status="failed", expires_at=FUTURE)
    with session_scope(sessions) as s:
        for jid, status, exp, chunks in (
            ("job_gone", "succeeded", PAST, 5),
            ("job_live", "running", PAST, 2),
            ("job_kept", "cancelled", FUTURE, 1),
        ):
            s.add(_job(jid, status, exp))
            s.flush()
            for seq in range(chunks):
                s.add(JobChunk(job_id=jid, seq=seq, start_index=seq, n_lines=1, lines=b"{}"))
        s.add(
            Integration(
                id="i1", tenant="t", kind="telegram", name="bot", config={}, secrets="x",
                secret_names=[],
            )
        )  # fmt: skip
        s.flush()
        for eid, status, exp in (
            ("ev_gone", "replied", PAST),  # its delivery goes too
            ("ev_waits", "replied", PAST),  # its delivery is still pending
            ("ev_queued", "queued", PAST),
        ):
            s.add(_event(eid, status, exp))
        s.flush()
        d = {"tenant": "t", "integration_id": "i1", "action": "reply", "method": "POST"}
        outbox.add(
            session=s,
            kind="integration",
            rows=[
                {**d, "id": "d_gone", "event_id": "ev_gone", "status": "delivered",
                 "expires_at": PAST},
                {**d, "id": "d_dead", "event_id": None, "status": "dead", "expires_at": PAST},
                {**d, "id": "d_pending", "event_id": "ev_waits"},
                {**d, "id": "d_kept", "event_id": None, "status": "delivered",
                 "expires_at": FUTURE},
            ],
        )  # fmt: skip
        s.flush()
        for did, n in (("d_gone", 2), ("d_dead", 3), ("d_pending", 1), ("d_kept", 1)):
            for i in range(n):
                s.add(DeliveryAttempt(delivery_id=did, attempt=i + 1, duration_ms=1.0))
    _fill_files(sessions)
    return ids


def _fill_files(sessions: sessionmaker[Session]) -> None:
    """Files and batches: expired uploads beside the input files of live or kept batches."""
    with session_scope(sessions) as s:
        for fid, exp, parts, batch_id in (
            ("f_gone", PAST, 3, None),  # no batch refers to it
            ("f_old_input", PAST, 1, None),  # the input of two expired batches
            ("f_live_input", PAST, 2, None),  # the input of a live batch
            ("f_kept_input", PAST, 1, None),  # the input of a final batch not yet expired
            ("f_fresh", FUTURE, 1, None),
            ("f_out_gone", PAST, 0, "b_gone"),  # rendered: they have no parts
            ("f_out_kept", FUTURE, 0, "b_kept"),
            ("f_err_kept", PAST, 0, "b_kept"),  # past its expiry, but its batch is kept
        ):
            s.add(_file(fid, exp, batch_id))
            s.flush()
            for seq in range(parts):
                s.add(FilePart(file_id=fid, seq=seq, data=b"{}\n"))
        for bid, status, exp, refs in (
            ("b_gone", "completed", PAST, ("f_old_input", "f_out_gone", None)),
            ("b_window", "expired", PAST, ("f_old_input", None, None)),  # OpenAI's final state
            ("b_live", "in_progress", PAST, ("f_live_input", None, None)),
            ("b_kept", "completed", FUTURE, ("f_kept_input", "f_out_kept", "f_err_kept")),
        ):
            s.add(_batch(bid, status, exp, *refs))


def _file(fid: str, expires: Any, batch_id: str | None = None) -> File:
    return File(
        id=fid, tenant="t", purpose="batch" if batch_id is None else "batch_output",
        filename=f"{fid}.jsonl", bytes=3, lines=1, batch_id=batch_id, created_at=NOW,
        expires_at=expires,
    )  # fmt: skip


def _batch(
    bid: str, status: str, expires: Any, input_id: str, out: str | None, err: str | None
) -> Batch:
    return Batch(
        id=bid, tenant="t", status=status, job_id=None, input_file_id=input_id,
        endpoint="/v1/embeddings", completion_window="24h", plan=b"", output_file_id=out,
        error_file_id=err, times={}, created_at=NOW, window_ends_at=NOW, expires_at=expires,
    )  # fmt: skip


def _job(jid: str, status: str, expires: Any) -> Job:
    return Job(
        id=jid, tenant="t", model="m", model_version="1", status=status, input_format="jsonl",
        created_at=NOW, updated_at=NOW, expires_at=expires,
    )  # fmt: skip


def _event(eid: str, status: str, expires: Any) -> IntegrationEvent:
    return IntegrationEvent(
        id=eid, integration_id="i1", tenant="t", external_id=eid, kind="message",
        status=status, data={}, created_at=NOW, expires_at=expires,
    )  # fmt: skip


def _counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as s:
        return {
            t.__tablename__: int(s.execute(select(func.count()).select_from(t)).scalar_one())
            for t in TABLES
        }


EXPECTED = {
    "delivery_attempts": 5,
    "deliveries": 2,
    "job_chunks": 5,
    "jobs": 1,
    "predictions": 3,
    "integration_events": 1,
    "file_parts": 4,
    "files": 3,
    "batches": 2,
}


def test_purge_deletes_what_is_final_and_expired_children_first_and_nothing_else(
    store: sessionmaker[Session],
) -> None:
    ids = _fill(store)
    engine = store.kw["bind"]
    before = _counts(store)
    settings = build_settings(purge_batch_rows=2)  # many small batches; chunks one at a time
    dry = purge(engine=engine, settings=settings, dry_run=True)
    assert (dry.deleted, dry.dry_run) == (EXPECTED, True)
    assert _counts(store) == before

    report = purge(engine=engine, settings=settings)
    assert report.deleted == EXPECTED and report.complete and report.total == 26
    after = _counts(store)
    assert {t: before[t] - after[t] for t in before} == EXPECTED
    with store() as s:
        left = set(s.scalars(select(Prediction.id)).all())
        assert left == {*ids["p_live"], *ids["p_kept"]}
        assert set(s.scalars(select(Job.id)).all()) == {"job_live", "job_kept"}
        assert set(s.scalars(select(Delivery.id)).all()) == {"d_pending", "d_kept"}
        assert set(s.scalars(select(IntegrationEvent.id)).all()) == {"ev_waits", "ev_queued"}
        assert s.scalar(select(func.count()).where(JobChunk.job_id == "job_gone")) == 0
        # an expired file stays while a batch that is live, or final and not yet expired,
        # names it (as its input, output or error file)
        assert set(s.scalars(select(File.id)).all()) == {
            "f_live_input", "f_kept_input", "f_fresh", "f_out_kept", "f_err_kept",
        }  # fmt: skip
        parts = s.execute(select(FilePart.file_id, func.count()).group_by(FilePart.file_id))
        assert {fid: n for fid, n in parts} == {"f_live_input": 2, "f_kept_input": 1, "f_fresh": 1}
        assert set(s.scalars(select(Batch.id)).all()) == {"b_live", "b_kept"}
    again = purge(engine=engine, settings=settings)
    assert again.total == 0 and again.complete


def test_a_live_batchs_expired_input_file_goes_once_the_batch_has_expired(
    store: sessionmaker[Session],
) -> None:
    _fill_files(store)
    engine = store.kw["bind"]
    settings = build_settings(purge_batch_rows=2)
    purge(engine=engine, settings=settings)
    with store() as s:
        assert s.get(File, "f_live_input") is not None
        assert s.scalar(select(func.count()).where(FilePart.file_id == "f_live_input")) == 2
    with session_scope(store) as s:  # the batch ends; its expiry is still ahead
        s.get_one(Batch, "b_live").status = "cancelled"
        s.get_one(Batch, "b_live").expires_at = FUTURE
    assert purge(engine=engine, settings=settings, dry_run=True).total == 0
    assert purge(engine=engine, settings=settings).total == 0
    with session_scope(store) as s:  # now it has expired too: both go, at the same run
        s.get_one(Batch, "b_live").expires_at = PAST
    dry = purge(engine=engine, settings=settings, dry_run=True)
    assert (dry.deleted["file_parts"], dry.deleted["files"], dry.deleted["batches"]) == (2, 1, 1)
    with store() as s:
        assert s.get(File, "f_live_input") is not None  # the dry run deleted nothing
    report = purge(engine=engine, settings=settings)
    assert (report.deleted["file_parts"], report.deleted["files"]) == (2, 1)
    assert report.deleted["batches"] == 1 and report.complete
    with store() as s:
        assert s.get(File, "f_live_input") is None and s.get(Batch, "b_live") is None
        assert s.scalar(select(func.count()).where(FilePart.file_id == "f_live_input")) == 0


def test_purge_stops_at_its_time_budget_and_the_next_run_finishes(
    pg_sessions: sessionmaker[Session],
) -> None:
    add_queued(pg_sessions, "m", [{}] * 7, status="succeeded", expires_at=PAST)
    with session_scope(pg_sessions) as s:
        s.add(_file("f_big", PAST))
        s.flush()
        s.add_all(FilePart(file_id="f_big", seq=i, data=b"x") for i in range(3))
    engine = pg_sessions.kw["bind"]
    ticks = iter(range(100))
    settings = build_settings(purge_batch_rows=2, purge_budget_seconds=10)  # one round
    report = purge(engine=engine, settings=settings, clock=lambda: float(next(ticks)))
    assert not report.complete and 0 < report.deleted["predictions"] < 7
    assert report.deleted["file_parts"] < 3 and report.deleted["files"] == 0  # parts first
    rest = purge(engine=engine, settings=settings)
    assert rest.complete and report.deleted["predictions"] + rest.deleted["predictions"] == 7
    assert report.deleted["file_parts"] + rest.deleted["file_parts"] == 3
    assert rest.deleted["files"] == 1


# --- deliveries expire once final ------------------------------------------------------------------


def test_a_delivery_expires_its_retention_after_it_is_final_and_a_replay_clears_it(
    pg_sessions: sessionmaker[Session], receiver: Receiver
) -> None:
    dispatcher = make(pg_sessions, max_attempts=1)
    dispatcher.retention_s = lambda tenant: {"t": 3600.0}.get(tenant, 60.0)
    try:
        ok = webhook_for(pg_sessions, receiver.url + "/ok")
        with pg_sessions() as s:
            assert s.get(Delivery, ok).expires_at is None  # type: ignore[union-attr]
        dispatcher.submit([ok])
        d = settled(pg_sessions, ok)
        assert d.status == "delivered" and d.delivered_at is not None
        assert d.expires_at == d.delivered_at + timedelta(hours=1)

        receiver.fail_next, receiver.fail_status = 1, 410
        dead = webhook_for(pg_sessions, receiver.url + "/gone", tenant="u")
        dispatcher.submit([dead])
        d = settled(pg_sessions, dead)
        assert d.status == "dead" and d.expires_at is not None
        assert timedelta(0) < d.expires_at - utcnow() <= timedelta(seconds=60)
        with session_scope(pg_sessions) as s:
            assert outbox.replay(session=s, tenant="u", delivery_ids=[dead]) == [dead]
        with pg_sessions() as s:
            assert s.get(Delivery, dead).expires_at is None  # type: ignore[union-attr]
    finally:
        dispatcher.close()


def test_build_dispatcher_uses_the_tenants_delivery_retention() -> None:
    from app.delivery.engine import build_dispatcher

    settings: Settings = build_settings(tenant_retention={"vip": {"deliveries": 42}})
    dispatcher = build_dispatcher(sessionmaker(), settings)
    try:
        assert dispatcher.retention_s("vip") == 42
        assert dispatcher.retention_s("other") == 7 * 86_400
    finally:
        dispatcher.close()


def test_inferq_purge_counts_with_dry_run_then_deletes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from app.cli import cli
    from app.settings import get_settings

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    migrate(url)
    engine = make_engine(build_settings(database_url=url))
    add_queued(make_sessionmaker(engine), "m", [{}] * 3, status="succeeded", expires_at=PAST)
    engine.dispose()
    monkeypatch.setenv("INFERQ_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        dry = CliRunner().invoke(cli, ["purge", "--dry-run"])
        assert dry.exit_code == 0 and "predictions\t3" in dry.output
        real = CliRunner().invoke(cli, ["purge"])
        assert real.exit_code == 0 and "predictions\t3" in real.output
        again = CliRunner().invoke(cli, ["purge", "--dry-run"])
        assert "predictions\t0" in again.output
    finally:
        get_settings.cache_clear()
