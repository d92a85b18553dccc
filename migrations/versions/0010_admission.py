"""Admission control: a counter row per bound, and partial indexes that count what waits

``admission_state`` holds one row per bound (``t:<tenant>``, ``m:<model>``): the inputs queued
or running as last counted plus what was admitted since, the measured drain rate and the
tenant's rate bucket. ``ix_predictions_waiting_tenant`` / ``_model`` index only the rows that
wait, so a recount reads those and nothing of the (much larger) history.

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    op.create_table(
        "admission_state",
        sa.Column("scope", sa.String(length=120), nullable=False),
        sa.Column("live", sa.Float(), nullable=False),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("drain_per_s", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("tokens_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_admission_state")),
    )
    for col in ("tenant", "model"):
        op.create_index(
            f"ix_predictions_waiting_{col}",
            "predictions",
            [col],
            postgresql_where=WAITING,
            sqlite_where=WAITING,
        )


def downgrade() -> None:
    for col in ("tenant", "model"):
        op.drop_index(f"ix_predictions_waiting_{col}", table_name="predictions")
    op.drop_table("admission_state")
