"""``/v1/integrations``: a tenant's Telegram bots and help desks, with their recent activity.

Secrets are write-only: they are accepted on create and update, stored encrypted, and shown
back only by name (``{"token": "set"}``).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from api.deps import RuntimeDep, TenantDep
from api.openapi import errors, json_body
from api.public import Deleted, IntegrationList, IntegrationPublic
from api.responses import JSON
from api.routes.hooks import hooks_of
from app.delivery import egress
from app.errors import InvalidInput
from app.integrations import store

router = APIRouter(prefix="/v1", tags=["integrations"])

NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$"
M = TypeVar("M", bound=BaseModel)


class IntegrationCreate(BaseModel):
    """Body of ``POST /v1/integrations``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["telegram", "zendesk", "generic"]
    name: str = Field(min_length=1, max_length=100, pattern=NAME)
    enabled: bool = True
    config: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, Any] = Field(default_factory=dict)


class IntegrationUpdate(BaseModel):
    """Body of ``PATCH /v1/integrations/{id}``: config and secrets are merged key by key."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=100, pattern=NAME)
    enabled: bool | None = None
    config: dict[str, Any] | None = None
    secrets: dict[str, Any] | None = None


async def parse(request: Request, schema: type[M]) -> M:
    """A JSON object body validated by ``schema``; a 422 ``invalid_input`` otherwise.

    Messages name the field, never echo a value (a secret may be one).
    """
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
    "/integrations",
    status_code=201,
    response_model=IntegrationPublic,
    responses=errors(409, 422),
    openapi_extra=json_body(IntegrationCreate),
)
async def create_integration(request: Request, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """Connect a Telegram bot, a Zendesk account or another help desk."""
    body = await parse(request, IntegrationCreate)
    box = hooks_of(request).box

    def work() -> dict[str, Any]:
        rt.registry.reload()
        row = store.create(
            sessions=rt.sessions,
            box=box,
            registry=rt.registry,
            policy=egress.policy_for(rt.settings),
            tenant=tenant,
            kind=body.kind,
            name=body.name,
            config=body.config,
            secrets=body.secrets,
            enabled=body.enabled,
        )
        return store.detailed(sessions=rt.sessions, tenant=tenant, integration_id=row.id)

    view = await run_in_threadpool(work)
    return JSON(view, status_code=201, headers={"Location": f"/v1/integrations/{view['id']}"})


@router.get("/integrations", response_model=IntegrationList)
async def list_integrations(rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """The tenant's integrations, each with its recent events and deliveries."""
    views = await run_in_threadpool(lambda: store.listed(sessions=rt.sessions, tenant=tenant))
    return JSON({"integrations": views})


@router.get(
    "/integrations/{integration_id}", response_model=IntegrationPublic, responses=errors(404)
)
async def get_integration(integration_id: str, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """One integration with its recent events, deliveries and every attempt."""
    view = await run_in_threadpool(
        lambda: store.detailed(sessions=rt.sessions, tenant=tenant, integration_id=integration_id)
    )
    return JSON(view)


@router.patch(
    "/integrations/{integration_id}",
    response_model=IntegrationPublic,
    responses=errors(404, 409, 422),
    openapi_extra=json_body(IntegrationUpdate),
)
async def update_integration(
    integration_id: str, request: Request, rt: RuntimeDep, tenant: TenantDep
) -> JSON:
    """Rename, enable or disable, or change config or secrets (merged)."""
    body = await parse(request, IntegrationUpdate)
    box = hooks_of(request).box

    def work() -> dict[str, Any]:
        rt.registry.reload()
        store.update(
            sessions=rt.sessions,
            box=box,
            registry=rt.registry,
            policy=egress.policy_for(rt.settings),
            tenant=tenant,
            integration_id=integration_id,
            changes=body.model_dump(exclude_unset=True),
        )
        return store.detailed(sessions=rt.sessions, tenant=tenant, integration_id=integration_id)

    return JSON(await run_in_threadpool(work))


@router.delete("/integrations/{integration_id}", response_model=Deleted, responses=errors(404))
async def delete_integration(integration_id: str, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """Disconnect an integration and forget its events and deliveries."""
    await run_in_threadpool(
        lambda: store.delete(sessions=rt.sessions, tenant=tenant, integration_id=integration_id)
    )
    return JSON({"id": integration_id, "deleted": True})
