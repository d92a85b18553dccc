"""Priority across the broker (a partial index of the queued ``high`` requests per model) and
the broker epochs (``broker_epochs``)

A claim takes, besides its message's own requests, the oldest queued ``high`` requests of its
model (``app.db.predictions._PG_CLAIM``), so a ``high`` request does not wait behind a backlog
of ``low`` messages in the broker. The index holds only queued ``high`` rows: it is empty, and
the look-up free, almost all the time.

``broker_epochs`` remembers that the broker behind a queue prefix was given its epoch marker
(``app.requeue.BrokerWatch``): a broker without the marker that had one lost its messages.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = "status = 'queued' AND priority = 0"


def upgrade() -> None:
    op.create_table(
        "broker_epochs",
        sa.Column("prefix", sa.String(length=120), nullable=False),
        sa.Column("marked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("prefix", name=op.f("pk_broker_epochs")),
    )
    op.create_index(
        "ix_predictions_high_queued",
        "predictions",
        ["model", "created_at"],
        postgresql_where=sa.text(WHERE),
        sqlite_where=sa.text(WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_predictions_high_queued", table_name="predictions")
    op.drop_table("broker_epochs")
