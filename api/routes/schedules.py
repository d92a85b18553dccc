"""``/v1/schedules``: recurring and file-triggered batch jobs, and their runs."""

from __future__ import annotations

from typing import Annotated, TypeVar

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from api.deps import RuntimeDep, TenantDep
from api.openapi import errors, json_body
from api.public import Deleted, RunList, RunPublic, ScheduleList, SchedulePublic
from api.responses import JSON
from app.errors import InvalidInput
from app.schedules import service
from app.schedules.specs import ScheduleCreate, ScheduleUpdate

router = APIRouter(prefix="/v1", tags=["schedules"])

M = TypeVar("M", bound=BaseModel)


async def _body(request: Request, schema: type[M]) -> M:
    """The JSON body as ``schema``; every way it can be wrong is a 422 ``invalid_input``."""
    raw = await request.body()
    try:
        data = orjson.loads(raw) if raw else None
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
    "/schedules",
    status_code=201,
    response_model=SchedulePublic,
    responses=errors(409, 422),
    openapi_extra=json_body(ScheduleCreate),
)
async def create_schedule(request: Request, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """Create a schedule: a model scoring a source on a cron (and/or on new files)."""
    body = await _body(request, ScheduleCreate)
    sched = await run_in_threadpool(
        lambda: service.create_schedule(
            sessions=rt.sessions,
            registry=rt.registry,
            settings=rt.settings,
            tenant=tenant,
            body=body,
        )
    )
    return JSON(
        service.schedule_public(sched),
        status_code=201,
        headers={"Location": f"/v1/schedules/{sched.id}"},
    )


@router.get("/schedules", response_model=ScheduleList)
async def list_schedules(rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """The caller's schedules, oldest first."""
    found = await run_in_threadpool(
        lambda: service.list_schedules(sessions=rt.sessions, tenant=tenant)
    )
    return JSON({"schedules": [service.schedule_public(s) for s in found]})


@router.get("/schedules/{schedule_id}", response_model=SchedulePublic, responses=errors(404))
async def get_schedule(schedule_id: str, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """A schedule, with its next run time and (SQL sources) its watermark."""
    sched = await run_in_threadpool(
        lambda: service.get_schedule(sessions=rt.sessions, tenant=tenant, schedule_id=schedule_id)
    )
    return JSON(service.schedule_public(sched))


@router.patch(
    "/schedules/{schedule_id}",
    response_model=SchedulePublic,
    responses=errors(404, 409, 422),
    openapi_extra=json_body(ScheduleUpdate),
)
async def update_schedule(
    schedule_id: str, request: Request, rt: RuntimeDep, tenant: TenantDep
) -> JSON:
    """Change a schedule (``{"enabled": false}`` pauses it); beat sees it at its next tick."""
    patch = await _body(request, ScheduleUpdate)
    sched = await run_in_threadpool(
        lambda: service.update_schedule(
            sessions=rt.sessions,
            registry=rt.registry,
            settings=rt.settings,
            tenant=tenant,
            schedule_id=schedule_id,
            patch=patch,
        )
    )
    return JSON(service.schedule_public(sched))


@router.delete("/schedules/{schedule_id}", response_model=Deleted, responses=errors(404))
async def delete_schedule(schedule_id: str, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """Delete a schedule and its run history (the jobs it made stay)."""
    await run_in_threadpool(
        lambda: service.delete_schedule(
            sessions=rt.sessions, tenant=tenant, schedule_id=schedule_id
        )
    )
    return JSON({"id": schedule_id, "deleted": True})


@router.post(
    "/schedules/{schedule_id}/run", status_code=202, response_model=RunPublic, responses=errors(404)
)
async def run_schedule(schedule_id: str, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """Run a schedule now (enabled or not); the run's job appears at the next tick."""
    run = await run_in_threadpool(
        lambda: service.request_run(sessions=rt.sessions, tenant=tenant, schedule_id=schedule_id)
    )
    return JSON(service.run_public(run), status_code=202)


@router.get("/schedules/{schedule_id}/runs", response_model=RunList, responses=errors(404))
async def list_runs(
    schedule_id: str,
    rt: RuntimeDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> JSON:
    """A schedule's runs, newest first: trigger, status, job and provenance."""
    runs = await run_in_threadpool(
        lambda: service.list_runs(
            sessions=rt.sessions, tenant=tenant, schedule_id=schedule_id, limit=limit
        )
    )
    return JSON({"runs": [service.run_public(r) for r in runs]})
