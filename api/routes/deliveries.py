"""``/v1/deliveries``: a tenant's outbound requests (signed webhooks, integration write-backs),
every attempt, and replaying the ones that were given up (``dead``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BeforeValidator
from starlette.concurrency import run_in_threadpool

from api.deps import RuntimeDep, TenantDep
from api.openapi import errors
from api.public import DeliveryList, DeliveryPublic
from api.responses import JSON
from app import retention
from app.delivery import outbox

router = APIRouter(prefix="/v1", tags=["deliveries"])


def _iso_only(value: Any) -> Any:
    """``?before=`` is an ISO 8601 date-time, as documented (pydantic would read a number as
    Unix seconds, or milliseconds past 2e10)."""
    try:
        float(value)
    except (TypeError, ValueError):
        return value
    raise ValueError("must be an ISO 8601 date-time, not a number")


@router.get("/deliveries", response_model=DeliveryList)
async def list_deliveries(
    rt: RuntimeDep,
    tenant: TenantDep,
    status: Literal["pending", "delivered", "dead"] | None = None,
    kind: Literal["webhook", "integration"] | None = None,
    before: Annotated[datetime | None, BeforeValidator(_iso_only)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> JSON:
    """The tenant's deliveries, newest first (``?status=dead`` lists the dead letters)."""
    rows = await run_in_threadpool(
        lambda: outbox.list_public(
            sessions=rt.sessions,
            tenant=tenant,
            status=status,
            kind=kind,
            before=before,
            limit=limit,
        )
    )
    return JSON({"deliveries": rows})


@router.get("/deliveries/{delivery_id}", response_model=DeliveryPublic, responses=errors(404))
async def get_delivery(delivery_id: str, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """One delivery with every attempt (status code, error, duration, outcome)."""
    with retention.noting(rt.settings, retention.Kind.deliveries, delivery_id, tenant):
        view = await run_in_threadpool(
            lambda: outbox.detail(sessions=rt.sessions, tenant=tenant, delivery_id=delivery_id)
        )
    return JSON(view)


@router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=202,
    response_model=DeliveryPublic,
    responses=errors(404),
)
async def replay_delivery(
    delivery_id: str, request: Request, rt: RuntimeDep, tenant: TenantDep
) -> JSON:
    """Send a dead delivery again with a fresh budget of attempts (a no-op unless it is dead)."""
    with retention.noting(rt.settings, retention.Kind.deliveries, delivery_id, tenant):
        replayed = await run_in_threadpool(
            lambda: outbox.replay_dead(
                sessions=rt.sessions, tenant=tenant, delivery_ids=[delivery_id]
            )
        )
    hooks = getattr(request.app.state, "integrations", None)
    if replayed and hooks is not None:
        hooks.sender.submit(replayed)  # else the sweeper sends it within a sweep interval
    view = await run_in_threadpool(
        lambda: outbox.detail(sessions=rt.sessions, tenant=tenant, delivery_id=delivery_id)
    )
    return JSON({**view, "replayed": bool(replayed)}, status_code=202)
