"""predictions.idempotency_key: room for a 255-character key and its "#<input index>"

A caller's ``Idempotency-Key`` may be 255 characters; each input stores it with ``#<index>``
appended, which overflowed the 255-character column (an error 500 instead of a 202).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _width(old: int, new: int) -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.alter_column(
            "idempotency_key",
            existing_type=sa.String(length=old),
            type_=sa.String(length=new),
            existing_nullable=True,
        )


def upgrade() -> None:
    _width(255, 320)


def downgrade() -> None:
    _width(320, 255)
