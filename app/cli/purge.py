"""``inferq purge``: delete expired objects now (what beat's ``inferq.purge`` does)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.settings import get_settings


def purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be deleted.")
    ] = False,
) -> None:
    """Delete final objects past their expiry (predictions, jobs, deliveries, events, files, batches)."""
    from app.db.engine import make_engine
    from app.purge import purge as run

    engine = make_engine(get_settings(), pool_size=1)
    try:
        report = run(engine=engine, settings=get_settings(), dry_run=dry_run)
    finally:
        engine.dispose()
    verb = "would delete" if dry_run else "deleted"
    for table, n in report.deleted.items():
        typer.echo(f"{table}\t{n}")
    more = "" if report.complete else " (time budget spent: the rest goes next run)"
    typer.echo(f"{verb} {report.total} rows in {report.seconds:g} s{more}", err=True)


def register(cli: typer.Typer) -> None:
    cli.command()(purge)
