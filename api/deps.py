"""Named dependencies: what every route gets from the app's state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.errors import Unauthorized
from app.notify import CompletionHub
from app.predictions.admission import Admission
from app.predictions.service import Publisher
from app.registry import Registry
from app.settings import Settings

DEFAULT_TENANT = "default"


@dataclass
class Runtime:
    """Built once per API process in the lifespan."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    registry: Registry
    publisher: Publisher
    hub: CompletionHub
    submitter: Any = None
    """Coalescer of submissions (one INSERT + one publish for many concurrent POSTs)."""
    loader: Any = None
    """Coalescer of prediction reads (one SELECT for many concurrent GETs)."""
    admission: Admission | None = None
    """The bounds every submission is checked against (``app.predictions.admission``)."""


# The dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency on its thread pool, a thread hop per dependency per request (19 % of the API's
# CPU under load, before this).


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings_dep(rt: RuntimeDep) -> Settings:
    return rt.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def get_tenant(request: Request, rt: RuntimeDep) -> str:
    """The caller's tenant from ``Authorization: Bearer <key>``; ``default`` when auth is off."""
    keys = rt.settings.api_keys
    if not keys:
        return DEFAULT_TENANT
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    tenant = keys.get(token.strip())
    if tenant is None:
        raise Unauthorized("unknown API key")
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]
