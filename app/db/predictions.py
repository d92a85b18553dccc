"""Queries on predictions. Every write of a result is idempotent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Prediction, Status

LIVE = (Status.queued.value, Status.running.value)


@dataclass(slots=True)
class ResultRow:
    """What a worker writes back for one prediction."""

    id: str
    status: str
    output: Any | None = None
    error_code: str | None = None
    error_message: str | None = None
    batch_size: int | None = None
    run_ms: float | None = None
    claim: int | None = None
    """The claim it ran under (``attempts`` when it was claimed): a fencing token. The write
    lands only while that claim holds (still ``running``, not claimed again since), so a worker
    that lost its lease (a partition, a pause) and comes back late writes nothing. None: no
    claim (a request failed before it ran), written while it is live."""


@dataclass(slots=True)
class Written:
    """A prediction whose final state was just written (for webhooks and notifications)."""

    id: str
    tenant: str
    callback_url: str | None
    job_id: str | None
    integration: str | None = None
    """The integration that asked for it (``metadata.integration``), if any."""
    traceparent: str | None = None
    """The trace context of the request that made it (its webhook carries it)."""
    public: Any = None
    """Its public columns as stored (``PUBLIC_COLUMNS``, all but ``output``), where the write
    returns them (Postgres): the final document a waiting caller gets in the NOTIFY."""


PUBLIC_COLUMNS = (
    "status",
    "model",
    "model_version",
    "created_at",
    "error_code",
    "error_message",
    "started_at",
    "completed_at",
    "batch_size",
    "priority",
    "metadata_",
    "job_id",
    "custom_id",
    "expires_at",
)
"""The columns of ``app.predictions.views.prediction_public`` besides ``id`` and ``output``."""


INSERT_COLUMNS = {
    "id": "text",
    "tenant": "text",
    "model": "text",
    "model_version": "text",
    "status": "text",
    "priority": "int",
    "input": "jsonb",
    "callback_url": "text",
    "metadata_": "jsonb",
    "idempotency_key": "text",
    "request_hash": "text",
    "deadline_at": "timestamptz",
    "created_at": "timestamptz",
    "published_at": "timestamptz",
    "attempts": "int",
    "expires_at": "timestamptz",
    "traceparent": "text",
}
"""What a submission's rows hold (``app.predictions.service.prepare``), and their SQL types."""


def _column(key: str) -> str:
    return "metadata" if key == "metadata_" else key


_PG_INSERT = text(
    "INSERT INTO predictions ({cols}) SELECT {cols} FROM jsonb_to_recordset(CAST(:rows AS jsonb))"
    " AS v({typed})".format(
        cols=", ".join(_column(k) for k in INSERT_COLUMNS),
        typed=", ".join(f"{_column(k)} {t}" for k, t in INSERT_COLUMNS.items()),
    )
)


def insert_predictions(*, session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert many predictions in one statement. On Postgres the rows go as one JSON
    parameter (serialised by orjson, unpacked by ``jsonb_to_recordset``): an ``executemany``
    costs a statement and some 0.1 ms of the API's CPU per row."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql" and all(
        r.keys() == INSERT_COLUMNS.keys() for r in rows
    ):
        payload = orjson.dumps(
            [{_column(k): v for k, v in r.items()} for r in rows],
            option=orjson.OPT_SERIALIZE_NUMPY,
        ).decode()
        session.execute(_PG_INSERT, {"rows": payload})
        return
    session.execute(insert(Prediction), list(rows))


def get_prediction(*, session: Session, tenant: str, prediction_id: str) -> Prediction | None:
    """The tenant's prediction, or None (another tenant's is None too)."""
    return session.scalars(
        select(Prediction).where(Prediction.id == prediction_id, Prediction.tenant == tenant)
    ).first()


def get_by_idempotency(*, session: Session, tenant: str, keys: Sequence[str]) -> list[Prediction]:
    """Predictions stored under these idempotency keys, in the keys' order."""
    rows = session.scalars(
        select(Prediction).where(
            Prediction.tenant == tenant, Prediction.idempotency_key.in_(list(keys))
        )
    ).all()
    by_key = {r.idempotency_key: r for r in rows}
    return [by_key[k] for k in keys if k in by_key]


def statuses(*, session: Session, ids: Sequence[str]) -> dict[str, str]:
    return dict(
        session.execute(
            select(Prediction.id, Prediction.status).where(Prediction.id.in_(ids))
        ).all()
    )


def cancel_prediction(*, session: Session, tenant: str, prediction_id: str) -> bool:
    """Cancel a queued prediction. True if it was cancelled by this call."""
    res = session.execute(
        update(Prediction)
        .where(
            Prediction.id == prediction_id,
            Prediction.tenant == tenant,
            Prediction.status == Status.queued.value,
        )
        .values(status=Status.cancelled.value, completed_at=utcnow())
        .returning(Prediction.id)
    )
    return res.first() is not None


@dataclass(slots=True)
class Claimed:
    """What a worker needs of a prediction it just claimed."""

    id: str
    model: str
    model_version: str
    input: Any
    priority: int
    deadline_at: datetime | None
    created_at: datetime | None = None
    attempts: int = 0
    """This claim's number (the fencing token its result is written with)."""
    traceparent: str | None = None
    """The trace context of the request that made it (``app.tracing``)."""


def claim(
    *, session: Session | Connection, ids: Sequence[str], model: str, lease: timedelta
) -> list[Claimed]:
    """Take the queued ones of ``ids`` that are of ``model``: mark them running under a new
    lease and return them. Cancelled, finished and running rows are left alone, so a message
    delivered twice runs nothing twice; one whose worker was lost is taken only by
    ``claim_lost``; a row of another model (a message on the wrong queue) is not taken."""
    now = utcnow()
    params = {"ids": list(ids), "of_model": model, "now": now, "lease_until": now + lease}
    bind = session.get_bind() if isinstance(session, Session) else session
    if bind.dialect.name == "postgresql":
        return [Claimed(*row) for row in session.execute(_PG_CLAIM, {**params, "pull": PULL_HIGH})]
    return [Claimed(*row) for row in session.execute(_CLAIM, params)]


def claim_lost(
    *,
    session: Session | Connection,
    prediction_id: str,
    model: str,
    lease: timedelta,
    max_attempts: int,
) -> Claimed | None:
    """Take one prediction of ``model`` whose worker was lost (running under a lease that ran
    out), unless it was claimed ``max_attempts`` times already (the sweeper fails those)."""
    now = utcnow()
    params = {
        "ids": [prediction_id],
        "of_model": model,
        "now": now,
        "lease_until": now + lease,
        "max": max_attempts,
    }
    row = session.execute(_CLAIM_LOST, params).first()
    return None if row is None else Claimed(*row)


def unclaim(*, session: Session, rows: Sequence[Claimed]) -> int:
    """Undo the claims of ``rows`` (still held under them): queued again, their attempt not
    counted, for another worker to take. Returns how many."""
    if not rows:
        return 0
    t = Prediction.__table__.c
    stmt = (
        update(Prediction.__table__)  # type: ignore[arg-type]
        .where(
            t.id == bindparam("b_id"),
            t.status == Status.running.value,
            t.attempts == bindparam("b_claim"),
        )
        .values(
            status=Status.queued.value,
            started_at=None,
            lease_expires_at=None,
            attempts=t.attempts - 1,
        )
    )
    result = session.connection().execute(
        stmt, [{"b_id": r.id, "b_claim": r.attempts} for r in rows]
    )
    return int(result.rowcount or 0)


def lost_ids(*, session: Session | Connection, ids: Sequence[str], max_attempts: int) -> list[str]:
    """Those of ``ids`` whose worker was lost and that may run again, in the order given."""
    t = Prediction.__table__.c
    found = set(
        session.execute(
            select(t.id).where(t.id.in_(list(ids)), _lost(utcnow()), t.attempts < max_attempts)
        ).scalars()
    )
    return [i for i in ids if i in found]


def _lost(now: Any) -> Any:
    """Running under a lease that ran out by ``now`` (a value or a bind parameter)."""
    t = Prediction.__table__.c
    return and_(t.status == Status.running.value, t.lease_expires_at < now)


def _claim_statement(*, lost: bool) -> Any:
    """A claim, built once (a message's hot path: no statement building per call)."""
    t = Prediction.__table__.c
    now = bindparam("now", type_=t.started_at.type)
    which = (
        and_(_lost(now), t.attempts < bindparam("max")) if lost else t.status == Status.queued.value
    )
    return (
        update(Prediction.__table__)  # type: ignore[arg-type]
        .where(t.id.in_(bindparam("ids", expanding=True)), t.model == bindparam("of_model"), which)
        .values(
            status=Status.running.value,
            started_at=now,
            lease_expires_at=bindparam("lease_until", type_=t.lease_expires_at.type),
            attempts=t.attempts + 1,
        )
        .returning(
            t.id,
            t.model,
            t.model_version,
            t.input,
            t.priority,
            t.deadline_at,
            t.created_at,
            t.attempts,
            t.traceparent,
        )
    )


_CLAIM = _claim_statement(lost=False)
_CLAIM_LOST = _claim_statement(lost=True)

PULL_HIGH = 64
"""High-priority requests of its model that a claim takes besides its message's own."""

_T = Prediction.__table__.c
_PG_CLAIM = text(
    """
    WITH pulled AS (
        SELECT q.id FROM predictions AS q
        WHERE q.model = :of_model AND q.status = 'queued' AND q.priority = 0
        ORDER BY q.created_at
        LIMIT :pull
        FOR UPDATE SKIP LOCKED
    )
    UPDATE predictions AS p SET
        status = 'running', started_at = :now, lease_expires_at = :lease_until,
        attempts = p.attempts + 1
    WHERE p.id IN (SELECT unnest(CAST(:ids AS text[])) UNION ALL SELECT id FROM pulled)
        AND p.model = :of_model AND p.status = 'queued'
    RETURNING p.id, p.model, p.model_version, p.input, p.priority, p.deadline_at,
        p.created_at, p.attempts, p.traceparent
    """
).columns(
    _T.id,
    _T.model,
    _T.model_version,
    _T.input,
    _T.priority,
    _T.deadline_at,
    _T.created_at,
    _T.attempts,
    _T.traceparent,
)
"""The claim on Postgres: the message's queued ids of the model, plus the oldest queued
``high`` requests of the model (up to ``PULL_HIGH``) that no other claim holds, whichever
message they came in. The broker hands out a model's messages first in, first out, and a worker
reserves several ahead (``worker_prefetch_multiplier`` times its concurrency), so a ``high``
request's own message may wait behind a whole backlog of ``low`` ones; taken by the next claim
of any worker of its model, it starts within the next batch (the batcher puts it first). Its own
message, when it comes, finds it taken and runs nothing. The partial index
``ix_predictions_high_queued`` keeps the look-up free when no ``high`` request waits. ``normal``
ahead of ``low`` keeps the broker's order."""


_PG_WRITE = text(
    """
    UPDATE predictions AS p SET
        status = v.status, output = v.output, error_code = v.error_code,
        error_message = v.error_message, batch_size = v.batch_size, run_ms = v.run_ms,
        completed_at = now(), lease_expires_at = NULL
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        id text, status text, output jsonb, error_code text, error_message text,
        batch_size int, run_ms float8, claim int)
    WHERE p.id = v.id AND p.status IN ('queued', 'running')
        AND (v.claim IS NULL OR (p.status = 'running' AND p.attempts = v.claim))
    RETURNING p.id, p.tenant, p.callback_url, p.job_id, p.metadata ->> 'integration',
        p.traceparent, p.status, p.model, p.model_version, p.created_at, p.error_code,
        p.error_message, p.started_at, p.completed_at, p.batch_size, p.priority,
        p.metadata AS metadata_, p.job_id, p.custom_id, p.expires_at
    """
)


def write_results(*, session: Session, results: Sequence[ResultRow]) -> list[Written]:
    """Store final states in one statement. Rows already final are left as they are.

    Returns the predictions this call finished (a second write of the same result returns none).
    """
    if not results:
        return []
    if session.get_bind().dialect.name == "postgresql":
        payload = orjson.dumps(
            [
                {
                    "id": r.id,
                    "status": r.status,
                    "output": r.output,
                    "error_code": r.error_code,
                    "error_message": r.error_message,
                    "batch_size": r.batch_size,
                    "run_ms": r.run_ms,
                    "claim": r.claim,
                }
                for r in results
            ],
            option=orjson.OPT_SERIALIZE_NUMPY,
        ).decode()
        rows = session.execute(_PG_WRITE, {"rows": payload}).all()
        return [
            Written(
                r[0], r[1], r[2], r[3], r[4], r[5], dict(zip(PUBLIC_COLUMNS, r[6:], strict=True))
            )
            for r in rows
        ]
    return _write_results_generic(session, results)


def _write_results_generic(session: Session, results: Sequence[ResultRow]) -> list[Written]:
    ids = [r.id for r in results]
    live = session.execute(
        select(
            Prediction.id,
            Prediction.tenant,
            Prediction.callback_url,
            Prediction.job_id,
            Prediction.metadata_,
            Prediction.status,
            Prediction.attempts,
            Prediction.traceparent,
        ).where(Prediction.id.in_(ids), Prediction.status.in_(LIVE))
    ).all()
    by_id = {r[0]: r for r in live}
    chosen: dict[str, ResultRow] = {}
    for r in results:  # the Postgres statement's fence (one writer at a time on SQLite)
        row = by_id.get(r.id)
        if row is None or r.id in chosen:
            continue
        if r.claim is None or (row[5] == Status.running.value and row[6] == r.claim):
            chosen[r.id] = r
    live = [by_id[i] for i in chosen]
    now = utcnow()
    stmt = (
        update(Prediction.__table__)  # type: ignore[arg-type]
        .where(Prediction.__table__.c.id == bindparam("b_id"))
        .where(or_(*(Prediction.__table__.c.status == v for v in LIVE)))
        .values(
            status=bindparam("b_status"),
            output=bindparam("b_output"),
            error_code=bindparam("b_error_code"),
            error_message=bindparam("b_error_message"),
            batch_size=bindparam("b_batch_size"),
            run_ms=bindparam("b_run_ms"),
            completed_at=now,
            lease_expires_at=None,
        )
    )
    params = [
        {
            "b_id": r.id,
            "b_status": r.status,
            "b_output": orjson.loads(orjson.dumps(r.output, option=orjson.OPT_SERIALIZE_NUMPY))
            if r.output is not None
            else None,
            "b_error_code": r.error_code,
            "b_error_message": r.error_message,
            "b_batch_size": r.batch_size,
            "b_run_ms": r.run_ms,
        }
        for r in chosen.values()
    ]
    if params:
        session.connection().execute(stmt, params)
    return [
        Written(
            r[0],
            r[1],
            r[2],
            r[3],
            (r[4] or {}).get("integration") if isinstance(r[4], dict) else None,
            r[7],
        )
        for r in live
    ]


NOTIFY_CHANNEL = "inferq_done"
NOTIFY_MAX_BYTES = 7_900
"""Postgres caps a NOTIFY payload under 8,000 bytes."""
FINALS_MARK = "\x1e"
"""Starts a payload of final documents (``app.notify``); any other payload is ``id,id,…``."""


@dataclass(slots=True)
class Final:
    """A prediction's final public document, sent with its NOTIFY to whoever waits on it."""

    id: str
    tenant: str
    expires_at: datetime | None
    doc: bytes


def notify_done(*, session: Session, ids: Sequence[str], finals: Sequence[Final] = ()) -> None:
    """Wake long-polls waiting on ``ids`` (Postgres NOTIFY, sent at commit), all in one
    statement. ``finals`` (documents of some of ``ids``) go along as ``FINALS_MARK`` +
    ``[id, tenant, expires]\\t<document>`` lines, so a waiting caller needs no read back; a
    document too large for a payload goes as its id alone."""
    if not ids or session.get_bind().dialect.name != "postgresql":
        return
    payloads: list[str] = []
    sent: set[str] = set()
    lines: list[str] = []
    size = 1
    for f in finals:
        head = orjson.dumps([f.id, f.tenant, f.expires_at.timestamp() if f.expires_at else None])
        n = len(head) + len(f.doc) + 2  # and its tab and newline
        if n > NOTIFY_MAX_BYTES - 1:
            continue
        line = (head + b"\t" + f.doc).decode()
        if size + n > NOTIFY_MAX_BYTES:
            payloads.append(FINALS_MARK + "\n".join(lines))
            lines, size = [], 1
        lines.append(line)
        size += n
        sent.add(f.id)
    if lines:
        payloads.append(FINALS_MARK + "\n".join(lines))
    rest = [i for i in ids if i not in sent]
    for start in range(0, len(rest), 150):  # 150 ids of 30 characters fit in a payload
        payloads.append(",".join(rest[start : start + 150]))
    # one JSON array (orjson escapes it in C; a text[] parameter is escaped by a regex per
    # element in psycopg: a fifth of a worker's Python time with documents in the payloads)
    session.execute(_PG_NOTIFY, {"payloads": orjson.dumps(payloads).decode()})


_PG_NOTIFY = text(
    f"SELECT pg_notify('{NOTIFY_CHANNEL}', p)"
    " FROM jsonb_array_elements_text(CAST(:payloads AS jsonb)) AS p"
)


def mark_published(*, session: Session, ids: Sequence[str], when: datetime | None) -> None:
    if ids:
        session.execute(
            update(Prediction).where(Prediction.id.in_(list(ids))).values(published_at=when)
        )


def count_by_status(*, session: Session) -> dict[str, int]:
    return dict(
        session.execute(select(Prediction.status, func.count()).group_by(Prediction.status)).all()
    )
