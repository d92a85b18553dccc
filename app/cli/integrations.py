"""``inferq telegram …`` and ``inferq integrations …``: bots and help desks from the shell."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import httpx
import typer
from sqlalchemy.orm import Session, sessionmaker

from app.errors import InferqError
from app.integrations import store
from app.integrations.config import IntegrationSettings
from app.integrations.polling import BotApi, find_bot, poll, set_webhook
from app.integrations.secrets import SecretBox, install_log_redaction
from app.integrations.telegram import TelegramConnector
from app.settings import get_settings

telegram_cli = typer.Typer(help="Telegram bots: long-polling, setWebhook.", no_args_is_help=True)
integrations_cli = typer.Typer(help="Telegram bots and help desks.", no_args_is_help=True)


def register(cli: typer.Typer) -> None:
    """Add ``telegram`` and ``integrations`` to the ``inferq`` command."""
    cli.add_typer(telegram_cli, name="telegram")
    cli.add_typer(integrations_cli, name="integrations")


@contextmanager
def _env() -> Iterator[tuple[sessionmaker[Session], SecretBox, IntegrationSettings]]:
    from app.db.engine import make_engine, make_sessionmaker

    install_log_redaction()
    settings = get_settings()
    isettings = IntegrationSettings()
    engine = make_engine(settings, pool_size=2)
    sessions = make_sessionmaker(engine)
    box = SecretBox.from_settings(settings, isettings)
    try:
        store.sync_settings(sessions=sessions, box=box, isettings=isettings)
        yield sessions, box, isettings
    except InferqError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


@contextmanager
def _bot_api(bot: str, timeout: float) -> Iterator[BotApi]:
    with _env() as (sessions, box, isettings), httpx.Client(timeout=timeout) as client:
        loaded = find_bot(sessions=sessions, box=box, bot=bot)
        yield BotApi(loaded, TelegramConnector(isettings.telegram_api_base), client)


@telegram_cli.command("poll")
def telegram_poll(
    bot: Annotated[str, typer.Option(help="The bot's integration id (or unique name).")],
    api: Annotated[
        str | None, typer.Option(help="This deployment's API (default http://127.0.0.1:$PORT).")
    ] = None,
    once: Annotated[bool, typer.Option(help="One round of getUpdates, then exit.")] = False,
    delete_webhook: Annotated[
        bool, typer.Option(help="Remove the bot's webhook first (getUpdates refuses while set).")
    ] = False,
    timeout: Annotated[int, typer.Option(help="Long-poll seconds per getUpdates.")] = 30,
) -> None:
    """Long-poll a bot that has no public URL and feed its updates to the hook."""
    hook_base = api or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
    with _bot_api(bot, timeout + 15) as bot_api:
        if delete_webhook:
            bot_api.call("deleteWebhook", {"drop_pending_updates": False})
        typer.echo(f"polling bot {bot_api.bot.id} into {hook_base}; Ctrl-C stops")
        try:
            n = poll(bot_api, hook_base=hook_base, long_poll_s=timeout, once=once, echo=typer.echo)
        except KeyboardInterrupt:
            return
        typer.echo(f"{n} update(s) forwarded")


@telegram_cli.command("set-webhook")
def telegram_set_webhook(
    bot: Annotated[str, typer.Option(help="The bot's integration id (or unique name).")],
    public_url: Annotated[str, typer.Option(help="Where this API is reachable over HTTPS.")],
    drop_pending: Annotated[bool, typer.Option(help="Drop updates waiting at Telegram.")] = False,
) -> None:
    """Call setWebhook with the hook's URL and the bot's secret token."""
    with _bot_api(bot, 30) as bot_api:
        url = set_webhook(bot_api, public_url, drop_pending=drop_pending)
        typer.echo(f"webhook set: {url}")


@integrations_cli.command("list")
def integrations_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
) -> None:
    """Every integration with its events and deliveries by status."""
    from app.db import integrations as crud
    from app.db.engine import session_scope

    with _env() as (sessions, _, _), session_scope(sessions) as s:
        rows = crud.list_all(session=s)
        rows = [r for r in rows if tenant is None or r.tenant == tenant]
        for row, view in zip(rows, store.views(s, rows, recent=0, attempts=False), strict=True):
            a = view["activity"]
            typer.echo(
                f"{view['id']}\t{row.tenant}\t{view['kind']}\t{view['name']}\t"
                f"{'enabled' if view['enabled'] else 'disabled'}\tsource={view['source']}\t"
                f"events={a['events']}\tdeliveries={a['deliveries']}"
            )
