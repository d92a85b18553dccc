"""Retention: an ``expires_at`` on every stored object, indexed for the purge

``predictions``, ``jobs`` (their ``job_chunks`` go with them) and ``integration_events`` get a
NOT NULL ``expires_at``: rows stored before this revision get ``created_at`` plus the retention
configured where the migration runs (``INFERQ_RETENTION_<KIND>_SECONDS`` and
``INFERQ_TENANT_RETENTION``, as the application reads them; 7 days when unset).
``deliveries`` (their ``delivery_attempts`` go with them) get a nullable one: NULL while
pending, else the time it became final (``delivered_at``, else its last attempt, else
``created_at``) plus the deliveries' retention.

On Postgres the backfill is one ``UPDATE`` per table (every row is rewritten once); on SQLite
the NOT NULL needs a table copy (``batch_alter_table``).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
DEFAULT_S = 7 * 86_400.0
# table -> (the retention kind its rows count as, NOT NULL)
TABLES = {
    "predictions": ("predictions", True),
    "jobs": ("jobs", True),
    "integration_events": ("events", True),
    "deliveries": ("deliveries", False),
}
FINAL_DELIVERY = (
    "COALESCE(delivered_at, (SELECT MAX(a.started_at) FROM delivery_attempts a"
    " WHERE a.delivery_id = deliveries.id), created_at)"
)


def _retention(kind: str) -> tuple[str, dict[str, Any]]:
    """SQL for the retention in seconds of a row of ``kind`` (by its ``tenant``), and its
    parameters."""
    default = float(os.environ.get(f"INFERQ_RETENTION_{kind.upper()}_SECONDS") or DEFAULT_S)
    tenants = json.loads(os.environ.get("INFERQ_TENANT_RETENTION") or "{}")
    params: dict[str, Any] = {"default_s": default}
    whens = []
    for i, (tenant, entry) in enumerate(sorted(tenants.items())):
        if kind in entry:
            whens.append(f" WHEN :t{i} THEN :s{i}")
            params.update({f"t{i}": tenant, f"s{i}": float(entry[kind])})
    if not whens:
        return ":default_s", params
    return f"(CASE tenant{''.join(whens)} ELSE :default_s END)", params


def _plus(start: str, seconds: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"{start} + make_interval(secs => {seconds})"
    return f"datetime({start}, '+' || {seconds} || ' seconds')"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table, (kind, _) in TABLES.items():
        op.add_column(table, sa.Column("expires_at", TS, nullable=True))
        seconds, params = _retention(kind)
        if table == "deliveries":
            where = " WHERE status IN ('delivered', 'dead')"
            start = FINAL_DELIVERY
        else:
            where, start = "", "created_at"
        op.execute(
            sa.text(
                f"UPDATE {table} SET expires_at = {_plus(start, seconds, dialect)}{where}"
            ).bindparams(**params)
        )
    for table, (_, not_null) in TABLES.items():
        if not_null:
            with op.batch_alter_table(table) as batch:
                batch.alter_column("expires_at", existing_type=TS, nullable=False)
        op.create_index(f"ix_{table}_expires_at", table, ["expires_at"])


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f"ix_{table}_expires_at", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("expires_at")
