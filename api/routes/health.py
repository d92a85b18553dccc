"""``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse, Response

from api.deps import RuntimeDep
from api.public import Health, Readiness
from api.responses import JSON

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The database or the broker is down."}},
)
async def readyz(rt: RuntimeDep) -> Response:
    """The database and the broker answer."""
    checks: dict[str, str] = {}

    def db() -> None:
        with rt.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def broker() -> None:
        check = getattr(rt.publisher, "check", None)
        if check is not None:
            check()

    for name, fn in (("database", db), ("broker", broker)):
        try:
            await run_in_threadpool(fn)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"down: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSON(
        {"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503
    )


@router.get("/metrics", response_class=PlainTextResponse)
def metrics() -> Response:
    """Prometheus metrics of this API process."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
