"""Tracing: a ``traceparent`` on predictions and deliveries

The W3C trace context (``00-<trace-id>-<parent-id>-<flags>``, 55 characters) of the request
that made a prediction, and of what a delivery reports, so the worker, the dispatcher and the
webhook carry the caller's trace (``app.tracing``). Nullable: rows stored before have none.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("predictions", "deliveries")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("traceparent", sa.String(length=55), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("traceparent")
