"""The ``inferq`` command line: one module per command group.

``processes`` starts the parts of the system (``migrate``, ``release``, ``worker``, ``beat``,
``api``, ``up``); ``models``, ``jobs``, ``schedules``, ``deliveries`` and ``integrations`` are the groups.
"""

from __future__ import annotations

import typer

from app.cli import processes
from app.cli.deliveries import deliveries_cli
from app.cli.integrations import register as register_integrations
from app.cli.jobs import jobs_cli
from app.cli.models import models_cli
from app.cli.purge import register as register_purge
from app.cli.schedules import schedules_cli

cli = typer.Typer(help="inferq: queue-driven inference workers.", no_args_is_help=True)
cli.add_typer(models_cli, name="models")
cli.add_typer(jobs_cli, name="jobs")
cli.add_typer(schedules_cli, name="schedules")
cli.add_typer(deliveries_cli, name="deliveries")
register_integrations(cli)  # inferq telegram …, inferq integrations …
processes.register(cli)
register_purge(cli)  # inferq purge [--dry-run]


def main() -> None:
    cli()
