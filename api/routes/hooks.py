"""``/hooks``: Telegram updates and help desk tickets in; answers go out after the model.

Both hooks answer at once: the update or ticket is stored with its prediction (or a canned
reply) and the caller gets its 2xx before any model runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.concurrency import run_in_threadpool

from api.deps import Runtime, RuntimeDep
from api.main import SHUTDOWN_HOOKS, STARTUP_HOOKS
from api.openapi import errors
from api.public import HookAccepted
from api.responses import JSON
from app.delivery.dispatcher import Dispatcher
from app.delivery.engine import build_dispatcher
from app.integrations import store
from app.integrations.config import IntegrationSettings
from app.integrations.inbound import HookDeps, receive_telegram, receive_ticket
from app.integrations.secrets import SecretBox
from app.integrations.telegram import SECRET_HEADER

log = logging.getLogger(__name__)

router = APIRouter(prefix="/hooks", tags=["hooks"])


@dataclass
class Hooks:
    """The API process's integration machinery, built at start-up."""

    isettings: IntegrationSettings
    box: SecretBox
    sender: Dispatcher
    """Sends canned replies at once (the one delivery engine, as in the workers)."""
    deps: HookDeps


def hooks_of(request: Request) -> Hooks:
    return request.app.state.integrations  # type: ignore[no-any-return]


async def _startup(app: FastAPI, rt: Runtime) -> None:
    isettings = IntegrationSettings()
    box = SecretBox.from_settings(rt.settings, isettings)
    sender = build_dispatcher(rt.sessions, rt.settings, isettings=isettings, box=box)
    app.state.integrations = Hooks(
        isettings, box, sender, HookDeps(rt.sessions, rt.registry, rt.settings, rt.publisher)
    )
    synced = await run_in_threadpool(
        lambda: store.sync_settings(sessions=rt.sessions, box=box, isettings=isettings)
    )
    if synced:
        log.info("integrations from settings", extra={"integrations": synced})


async def _shutdown(app: FastAPI, rt: Runtime) -> None:
    hooks = getattr(app.state, "integrations", None)
    if hooks is not None:
        await run_in_threadpool(hooks.sender.close)


def hook_body(secret_header: str | None = None) -> dict[str, Any]:
    """``openapi_extra`` of a hook: a JSON object in the sender's own shape (read raw: a
    signature covers its exact bytes), with the sender's secret header if it has one."""
    extra: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    }
    if secret_header is not None:
        extra["parameters"] = [
            {"name": secret_header, "in": "header", "required": True, "schema": {"type": "string"}}
        ]
    return extra


if _startup not in STARTUP_HOOKS:
    STARTUP_HOOKS.append(_startup)
    SHUTDOWN_HOOKS.append(_shutdown)


@router.post(
    "/telegram/{bot}",
    response_model=HookAccepted,
    responses=errors(401, 404, 422, 429),
    openapi_extra=hook_body(secret_header=SECRET_HEADER),
)
async def telegram_update(bot: str, request: Request, rt: RuntimeDep) -> JSON:
    """A Telegram Bot API ``Update`` for bot ``{bot}``; checks ``X-Telegram-Bot-Api-Secret-Token``."""
    hooks = hooks_of(request)
    body = await request.body()
    secret = request.headers.get(SECRET_HEADER)
    integ = await run_in_threadpool(
        lambda: store.load(sessions=rt.sessions, box=hooks.box, integration_id=bot)
    )
    accepted = await run_in_threadpool(
        lambda: receive_telegram(integ, bot=bot, secret=secret, body=body, deps=hooks.deps)
    )
    hooks.sender.submit(accepted.deliveries)
    return JSON(accepted.public())


@router.post(
    "/tickets/{integration}",
    response_model=HookAccepted,
    responses={
        202: {"model": HookAccepted, "description": "Stored; the triage is queued."},
        **errors(401, 404, 422, 429),
    },
    openapi_extra=hook_body(),
)
async def ticket_created(integration: str, request: Request, rt: RuntimeDep) -> JSON:
    """A help desk's signed "ticket created" webhook; the triage is written back to the ticket."""
    hooks = hooks_of(request)
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    integ = await run_in_threadpool(
        lambda: store.load(sessions=rt.sessions, box=hooks.box, integration_id=integration)
    )
    accepted = await run_in_threadpool(
        lambda: receive_ticket(
            integ, integration=integration, headers=headers, body=body, deps=hooks.deps
        )
    )
    hooks.sender.submit(accepted.deliveries)
    return JSON(accepted.public(), status_code=202 if accepted.status == "queued" else 200)
