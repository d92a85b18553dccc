"""``/v1/batches``: OpenAI's Batch API on inferq's bulk jobs (``app.openai_compat.batches``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.deps import RuntimeDep, TenantDep
from api.openai_errors import OpenAIRoute
from api.openapi import json_body, openai_errors
from api.public import BatchList, BatchObject
from api.responses import JSON
from api.routes.openai_embeddings import COUNTER
from app.jobs.ingest import JobPublisher
from app.openai_compat import batches, wire
from app.openai_compat.batch_plan import ENDPOINTS
from app.openai_compat.batches import WINDOWS

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)


class BatchCreate(BaseModel):
    """Body of ``POST /v1/batches``."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=40)
    endpoint: str = Field(max_length=64, json_schema_extra={"enum": list(ENDPOINTS)})
    completion_window: str = Field(max_length=16, json_schema_extra={"enum": list(WINDOWS)})
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None
    """Accepted and not used: output files expire with the batch."""


@router.post(
    "/batches",
    response_model=BatchObject,
    responses=openai_errors(400, 404, 429),
    openapi_extra=json_body(BatchCreate),
)
async def create_batch(request: Request, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """Start a batch: every request line of an uploaded ``batch`` file, as one bulk job."""
    body = wire.parse_body(await request.body(), BatchCreate)
    publisher = rt.publisher
    if not isinstance(publisher, JobPublisher):  # pragma: no cover - wiring error
        raise TypeError("the API's publisher cannot publish job chunks")
    batch = await run_in_threadpool(
        lambda: batches.create_batch(
            sessions=rt.sessions,
            publisher=publisher,
            registry=rt.registry,
            settings=rt.settings,
            counter=COUNTER,
            tenant=tenant,
            input_file_id=body.input_file_id,
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            metadata=body.metadata,
        )
    )
    return JSON(batch)


@router.get("/batches", response_model=BatchList, responses=openai_errors(400))
async def list_batches(
    rt: RuntimeDep,
    tenant: TenantDep,
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JSON:
    """The caller's batches, newest first; ``after`` a batch id pages on."""
    page = await run_in_threadpool(
        lambda: batches.list_batches(
            sessions=rt.sessions,
            registry=rt.registry,
            settings=rt.settings,
            tenant=tenant,
            after=after,
            limit=limit,
        )
    )
    return JSON(page)


@router.get("/batches/{batch_id}", response_model=BatchObject, responses=openai_errors(404))
async def get_batch(batch_id: str, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """A batch: its status (OpenAI's names), request counts and output and error files."""
    batch = await run_in_threadpool(
        lambda: batches.get_batch(
            sessions=rt.sessions,
            registry=rt.registry,
            settings=rt.settings,
            tenant=tenant,
            batch_id=batch_id,
        )
    )
    return JSON(batch)


@router.post(
    "/batches/{batch_id}/cancel", response_model=BatchObject, responses=openai_errors(404, 409)
)
async def cancel_batch(batch_id: str, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """Cancel what of a batch has not run (``cancelling``, then ``cancelled``); 409 once ended."""
    batch = await run_in_threadpool(
        lambda: batches.cancel_batch(
            sessions=rt.sessions,
            registry=rt.registry,
            settings=rt.settings,
            tenant=tenant,
            batch_id=batch_id,
        )
    )
    return JSON(batch)
