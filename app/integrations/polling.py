"""Telegram without a public URL: long-poll ``getUpdates`` and hand each update to the hook.

The bridge posts every update to this deployment's own ``/hooks/telegram/{bot}`` with the
bot's secret header, so a polled update takes exactly the path a pushed one does (stored once
per ``update_id``, answered by the worker). It moves Telegram's ``offset`` past an update only
once the hook took it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from sqlalchemy.orm import Session, sessionmaker

from app.db import integrations as crud
from app.db.engine import session_scope
from app.errors import InferqError, NotFound
from app.integrations.secrets import SecretBox, redact
from app.integrations.store import Loaded, opened
from app.integrations.telegram import SECRET_HEADER, TelegramConnector

ALLOWED_UPDATES = ["message", "edited_message"]
Echo = Callable[[str], None]


class PollingError(InferqError):
    """The Bot API refused polling (wrong token, or a webhook is set)."""

    code = "polling_failed"


def find_bot(*, sessions: sessionmaker[Session], box: SecretBox, bot: str) -> Loaded:
    """A Telegram integration by id, or by name when exactly one has that name."""
    with session_scope(sessions) as s:
        row = crud.get_integration(session=s, integration_id=bot)
        if row is None:
            named = [r for r in crud.list_all(session=s) if r.name == bot]
            row = named[0] if len(named) == 1 else None
    if row is None or row.kind != "telegram":
        raise NotFound(f"no Telegram bot with id or (unique) name {bot!r}")
    return opened(row, box)


@dataclass
class BotApi:
    """The few Bot API calls the command line makes."""

    bot: Loaded
    connector: TelegramConnector
    client: httpx.Client

    def call(self, method: str, params: dict[str, Any]) -> Any:
        """``method`` with ``params``; its ``result``, or ``PollingError`` (redacted)."""
        base = self.connector.base(self.bot.config)  # type: ignore[arg-type]
        url = f"{base}/bot{self.bot.secrets['token']}/{method}"
        try:
            resp = self.client.post(url, json=params)
        except httpx.HTTPError as exc:
            raise PollingError(redact(f"{method}: {type(exc).__name__}: {exc}")) from None
        if resp.status_code == 429:
            wait = self.connector.retry_after(resp) or 1.0
            raise _Wait(wait)
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if not (200 <= resp.status_code < 300) or not body.get("ok", False):
            detail = redact(str(body.get("description") or resp.text[:200]))
            hint = ""
            if resp.status_code == 409:
                hint = "; a webhook is set: pass --delete-webhook to poll instead"
            raise PollingError(f"{method} answered {resp.status_code}: {detail}{hint}")
        return body.get("result")


class _Wait(Exception):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


def set_webhook(api: BotApi, public_url: str, *, drop_pending: bool = False) -> str:
    """Point Telegram at ``{public_url}/hooks/telegram/{id}`` with the bot's secret token."""
    url = f"{public_url.rstrip('/')}/hooks/telegram/{api.bot.id}"
    api.call(
        "setWebhook",
        {
            "url": url,
            "secret_token": api.bot.secrets["webhook_secret"],
            "allowed_updates": ALLOWED_UPDATES,
            "drop_pending_updates": drop_pending,
        },
    )
    return url


def poll(
    api: BotApi,
    *,
    hook_base: str,
    long_poll_s: int = 30,
    once: bool = False,
    echo: Echo = print,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Forward updates until stopped (or one round with ``once``); returns how many went in."""
    hook = f"{hook_base.rstrip('/')}/hooks/telegram/{api.bot.id}"
    headers = {SECRET_HEADER: api.bot.secrets["webhook_secret"], "Content-Type": "application/json"}
    offset: int | None = None
    forwarded, failures = 0, 0
    while True:
        params: dict[str, Any] = {"timeout": 0 if once else long_poll_s}
        params["allowed_updates"] = ALLOWED_UPDATES
        if offset is not None:
            params["offset"] = offset
        try:
            updates = api.call("getUpdates", params) or []
            for update in updates:
                resp = api.client.post(hook, content=orjson.dumps(update), headers=headers)
                if resp.status_code >= 500 or resp.status_code in (401, 404, 429):
                    raise PollingError(f"the hook answered {resp.status_code}: {resp.text[:200]}")
                offset = int(update["update_id"]) + 1
                forwarded += 1
            failures = 0
        except _Wait as wait:
            echo(f"Telegram asks to wait {wait.seconds:.0f} s")
            sleep(wait.seconds)
            continue
        except (PollingError, httpx.HTTPError) as exc:
            failures += 1
            if once or failures >= 10:
                raise PollingError(redact(str(exc))) from None
            echo(f"retrying after: {redact(str(exc))}")
            sleep(min(2.0**failures, 60.0))
            continue
        if updates:
            echo(f"forwarded {len(updates)} update(s)")
        if once:
            if offset is not None:
                api.call("getUpdates", {"offset": offset, "timeout": 0, "limit": 1})
            return forwarded
