"""``GET /v1/usage``: what the caller's tenant has waiting, and its bounds."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import RuntimeDep, TenantDep
from api.public import Usage
from api.responses import JSON
from app.db.engine import session_scope
from app.predictions.admission import Admission

router = APIRouter(prefix="/v1", tags=["usage"])


@router.get("/usage", response_model=Usage)
async def get_usage(rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """The tenant's inputs queued or running (in all, by model) and its limits."""
    admission = rt.admission or Admission(rt.settings)

    def read() -> dict[str, object]:
        with session_scope(rt.sessions) as s:
            return admission.usage(s, tenant)

    return JSON(await run_in_threadpool(read))
