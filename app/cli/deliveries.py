"""``inferq deliveries …``: the outbox as an operator sees it (every tenant's), dead letters
listed and replayed. Talks to the database (``INFERQ_DATABASE_URL``); the sweeper sends what
is replayed within a sweep interval."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import orjson
import typer
from sqlalchemy.orm import Session, sessionmaker

from app.settings import get_settings

deliveries_cli = typer.Typer(
    help="Outbound deliveries (webhooks, write-backs): list, show, replay dead ones.",
    no_args_is_help=True,
)

TenantOpt = Annotated[str | None, typer.Option(help="Only this tenant's (default: all).")]


@contextmanager
def _sessions() -> Iterator[sessionmaker[Session]]:
    from app.db.engine import make_engine, make_sessionmaker

    engine = make_engine(get_settings())
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@deliveries_cli.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="pending, delivered or dead.")] = "dead",
    kind: Annotated[str | None, typer.Option(help="webhook or integration.")] = None,
    tenant: TenantOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
) -> None:
    """Deliveries, newest first (default: the dead ones), one line each."""
    from app.delivery import outbox

    with _sessions() as sessions:
        rows = outbox.list_public(
            sessions=sessions,
            tenant=tenant,
            status=status or None,
            kind=kind,
            limit=limit,
        )
    for d in rows:
        where = d.get("url") or f"{d.get('integration_id')} {d.get('action')}"
        typer.echo(
            f"{d['id']}\t{d['kind']}\t{d['status']}\t{d['dead_reason'] or '-'}"
            f"\t{d['attempt_count']}\t{where}\t{d['last_error'] or ''}"
        )
    typer.echo(f"{len(rows)} deliveries", err=True)


@deliveries_cli.command("show")
def show(delivery_id: str) -> None:
    """One delivery with every attempt, as JSON."""
    from app.delivery import outbox

    with _sessions() as sessions:
        view = outbox.detail(sessions=sessions, tenant=None, delivery_id=delivery_id)
    typer.echo(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())


@deliveries_cli.command("replay")
def replay(
    delivery_ids: Annotated[list[str] | None, typer.Argument(help="Ids (none: --all).")] = None,
    all_dead: Annotated[bool, typer.Option("--all", help="Every dead delivery.")] = False,
    reason: Annotated[str | None, typer.Option(help="With --all: only this dead reason.")] = None,
    tenant: TenantOpt = None,
) -> None:
    """Send dead deliveries again with a fresh budget of attempts."""
    from app.delivery import outbox

    if not delivery_ids and not all_dead:
        raise typer.BadParameter("give delivery ids, or --all")
    with _sessions() as sessions:
        done = outbox.replay_dead(
            sessions=sessions, tenant=tenant, delivery_ids=delivery_ids or [], reason=reason
        )
    for did in done:
        typer.echo(did)
    typer.echo(f"{len(done)} deliveries pending again (the sweeper sends them)", err=True)
