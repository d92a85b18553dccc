"""lz4 instead of pglz for the large values: chunk lines and results, prediction inputs/outputs

Postgres compresses values over ~2 kB (TOAST) with pglz by default. A text chunk's results
(256 embeddings, ~1.2 MB) cost ~48 ms of server CPU to compress with pglz and ~4 ms with lz4,
for a slightly larger value; embeddings in ``predictions.output`` (~5 kB each) likewise. Only new
values are compressed this way; stored ones stay as they are. Postgres 14+ built with lz4 (as
Debian's and the official images are); elsewhere this is a notice and pglz stays.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("job_chunks", "lines"),
    ("job_chunks", "results"),
    ("predictions", "input"),
    ("predictions", "output"),
)


def _set(method: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    statements = " ".join(
        f"EXECUTE 'ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method}';"
        for table, column in COLUMNS
    )
    # EXECUTE: parsed when run, so a server without SET COMPRESSION (< 14) or without lz4
    # raises inside the block, where it becomes a notice.
    op.execute(
        f"""
        DO $$
        BEGIN
            {statements}
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'column compression {method} not available here (%); unchanged', SQLERRM;
        END
        $$
        """
    )


def upgrade() -> None:
    _set("lz4")


def downgrade() -> None:
    _set("default")
