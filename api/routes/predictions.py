"""``/v1/predictions``: submit, poll (long-poll), cancel."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from sqlalchemy import bindparam, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.deps import Runtime, RuntimeDep, TenantDep, get_tenant
from api.longpoll import MAX_WAIT_S, wait_final
from api.metrics import SUBMITTED
from api.openapi import errors, json_body
from api.public import PredictionAccepted, PredictionPublic, PredictionsAccepted
from api.responses import JSON, RawJSON
from api.schemas import PredictionCreate
from app import retention
from app.db.engine import one_statement
from app.db.models import Prediction, Status
from app.db.predictions import PUBLIC_COLUMNS
from app.errors import InvalidInput
from app.predictions import service
from app.predictions.views import iso, prediction_public

router = APIRouter(prefix="/v1", tags=["predictions"])

MAX_HEADER = 255
"""Longest ``Idempotency-Key`` and ``Prefer`` header accepted."""


async def parse_body(request: Request, schema: type[PredictionCreate]) -> PredictionCreate:
    """Read and validate a JSON body; every way it can be wrong is a 422 ``invalid_input``."""
    raw = await request.body()
    if not raw:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "body"
        raise InvalidInput(f"{where}: {err['msg']}") from exc


@router.post(
    "/predictions",
    status_code=202,
    response_model=PredictionAccepted | PredictionsAccepted | PredictionPublic,
    responses={
        200: {"model": PredictionPublic, "description": "Final within ``Prefer: wait``."},
        **errors(409, 422, 429),
    },
    openapi_extra=json_body(
        PredictionCreate, headers={"Idempotency-Key": MAX_HEADER, "Prefer": MAX_HEADER}
    ),
)
async def create_prediction(request: Request) -> Response:
    """Queue one input (``input``) or several (``inputs``) for a model.

    ``Prefer: wait=<seconds>`` (RFC 7240, at most 30) on a single input holds the answer until
    the prediction is final: ``200`` with the whole prediction (as ``GET`` gives it) when it
    ended in time, else ``202`` with its state then; ``Preference-Applied`` says it was used.
    """
    # The API's hottest route reads its own body and headers: FastAPI's per-request dependency
    # solving and body parsing cost a third of the API process's CPU under load. The body and
    # headers are declared for OpenAPI by ``json_body``.
    rt: Runtime = request.app.state.runtime
    tenant = await get_tenant(request, rt)
    headers = request.headers
    idempotency_key = headers.get("idempotency-key")
    prefer = headers.get("prefer")
    for name, value in (("idempotency-key", idempotency_key), ("prefer", prefer)):
        if value is not None and len(value) > MAX_HEADER:
            raise InvalidInput(f"header.{name}: String should have at most {MAX_HEADER} characters")
    return await _create(request, rt, tenant, idempotency_key, prefer)


async def _create(
    request: Request, rt: Runtime, tenant: str, idempotency_key: str | None, prefer: str | None
) -> Response:
    wait = prefer_wait(prefer)
    body = await parse_body(request, PredictionCreate)
    many = body.inputs is not None
    sub = service.Submission(
        tenant=tenant,
        model=body.model,
        model_version=body.model_version,
        inputs=list(body.inputs) if body.inputs is not None else [body.input],
        many=many,
        callback_url=body.callback_url,
        priority=body.priority,
        deadline_s=body.deadline_s,
        metadata=body.metadata,
        idempotency_key=idempotency_key,
        ttl_s=body.ttl_s,
    )
    rows = await accept(rt, sub)
    if many:
        return JSON({"predictions": rows}, status_code=202)
    pid = rows[0]["id"]
    headers = {"Location": f"/v1/predictions/{pid}"}
    if wait is None:
        return JSON(rows[0], status_code=202, headers=headers)
    p = await _wait_final(rt, tenant, pid, wait)
    headers["Preference-Applied"] = f"wait={wait:g}"
    if isinstance(p, bytes):  # the final document, as the worker's NOTIFY brought it
        return RawJSON(p, status_code=200, headers=headers)
    final = Status(p.status).is_final
    return JSON(prediction_public(p), status_code=200 if final else 202, headers=headers)


async def accept(rt: Runtime, sub: service.Submission) -> list[dict[str, Any]]:
    """Validate, store and publish ``sub`` (admission-controlled, idempotent with its key);
    returns ``{"id", "status", "model", "created_at"}`` per input, a replay's if it is one.
    ``POST /v1/predictions`` and ``POST /v1/embeddings`` both submit through here."""
    service.prepare(sub, registry=rt.registry, settings=rt.settings, now=service.now())
    # Expected before they are stored: a NOTIFY for them can only come after, never be missed.
    ids = [r["id"] for r in sub.rows]
    rt.hub.expect(ids, sub.tenant)
    try:
        replay = await submit(rt, sub)
    except BaseException:
        rt.hub.forget(ids)
        raise
    if replay is not None:
        rt.hub.forget(ids)
        return [
            {"id": p.id, "status": p.status, "model": p.model, "created_at": iso(p.created_at)}
            for p in replay
        ]
    SUBMITTED.labels(model=sub.model).inc(len(sub.rows))
    return [
        {"id": r["id"], "status": "queued", "model": r["model"], "created_at": iso(r["created_at"])}
        for r in sub.rows
    ]


def prefer_wait(header: str | None) -> float | None:
    """The ``wait`` preference of a ``Prefer`` header in seconds (None: not asked for); other
    preferences are ignored, as RFC 7240 says. A ``wait`` that is not 0-30 seconds is a 422."""
    if not header:
        return None
    for pref in header.split(","):
        name, _, value = pref.split(";")[0].strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= MAX_WAIT_S:  # NaN fails the comparison too
            raise InvalidInput(
                f"Prefer: wait={value!r} is not a number of seconds from 0 to {MAX_WAIT_S:g}"
            )
        return seconds
    return None


async def submit(rt: Runtime, sub: service.Submission) -> list[Prediction] | None:
    if rt.submitter is not None:
        return await rt.submitter.submit(sub)  # type: ignore[no-any-return]
    (replay,) = await run_in_threadpool(
        lambda: service.store_and_publish(
            [sub], sessions=rt.sessions, publisher=rt.publisher, admission=rt.admission
        )
    )
    if isinstance(replay, BaseException):
        raise replay
    return replay


# What a read needs: the public fields and the tenant. Plain rows, not ORM objects: a long-poll
# read is the API's hottest query.
READ_COLUMNS = [
    getattr(Prediction, name).label(name) for name in ("id", "tenant", "output", *PUBLIC_COLUMNS)
]


# Built once with an expanding parameter: SQLAlchemy then finds it in its compiled cache without
# rebuilding a 16-column statement per read (a third of a read's cost in the API).
READ_MANY = select(*READ_COLUMNS).where(Prediction.id.in_(bindparam("ids", expanding=True)))


def load_many(rt: Runtime, ids: list[str]) -> list[Any]:
    """One SELECT for many reads (the loader coalescer's flush)."""
    with one_statement(rt.engine) as conn:
        rows = conn.execute(READ_MANY, {"ids": ids})
        found = {r.id: r for r in rows}
    return [found.get(i) for i in ids]


async def _load(rt: Runtime, tenant: str, pid: str) -> Any:
    if rt.loader is not None:
        p = await rt.loader.submit(pid)
    else:
        p = (await run_in_threadpool(load_many, rt, [pid]))[0]
    if (
        p is None
        or p.tenant != tenant
        or retention.is_expired(Status(p.status).is_final, p.expires_at, service.now())
    ):
        raise retention.not_found(rt.settings, retention.Kind.predictions, pid, tenant)
    return p


@router.get("/predictions/{prediction_id}", response_model=PredictionPublic, responses=errors(404))
async def get_prediction(
    prediction_id: str,
    rt: RuntimeDep,
    tenant: TenantDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
) -> Response:
    """A prediction's state and result; ``?wait=<s>`` holds the answer until it is final."""
    if wait <= 0:
        return JSON(prediction_public(await _load(rt, tenant, prediction_id)))
    p = await _wait_final(rt, tenant, prediction_id, wait)
    return RawJSON(p) if isinstance(p, bytes) else JSON(prediction_public(p))


async def _wait_final(rt: Runtime, tenant: str, pid: str, wait: float) -> Any:
    """Read ``pid`` until it is final or ``wait`` seconds have passed; or the final document
    (bytes) a NOTIFY brought. An id this process just submitted and no NOTIFY named since is
    not read before its NOTIFY (one read, not two; none when the NOTIFY carried it)."""
    return await wait_final(
        rt,
        pid,
        lambda: _load(rt, tenant, pid),
        lambda p: Status(p.status).is_final,
        wait,
        skip_first_read=rt.hub.still_pending(pid, tenant),
        final=lambda: rt.hub.take_final(pid, tenant, service.now().timestamp()),
    )


@router.delete(
    "/predictions/{prediction_id}", response_model=PredictionPublic, responses=errors(404, 409)
)
async def cancel_prediction(prediction_id: str, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """Cancel a prediction that has not started (409 once it has)."""
    p = await run_in_threadpool(
        lambda: service.cancel(
            sessions=rt.sessions, settings=rt.settings, tenant=tenant, prediction_id=prediction_id
        )
    )
    return JSON(prediction_public(p))
