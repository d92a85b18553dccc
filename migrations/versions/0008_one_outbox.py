"""One outbox: webhook and integration deliveries (and their attempts) in one table each

``webhook_deliveries``/``webhook_attempts`` and ``integration_deliveries``/
``integration_attempts`` become ``deliveries``/``delivery_attempts`` (``kind`` tells them
apart). Every row moves with its id; ``failed`` becomes ``dead`` with a ``dead_reason``.
The downgrade moves them back (a ``dead`` delivery becomes ``failed``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = sa.DateTime(timezone=True)

# How a delivery given up before this revision is classified: one without attempts never had a
# subject to send (or the integration was gone); one that got a 4xx was rejected; the rest ran
# out of attempts.
DEAD_REASON = """CASE
    WHEN d.attempt_count = 0 THEN 'gone'
    WHEN EXISTS (SELECT 1 FROM {attempts} a WHERE a.delivery_id = d.id AND a.status_code >= 400
                 AND a.status_code < 500 AND a.status_code NOT IN (408, 409, 425, 429)
                 AND a.attempt = d.attempt_count) THEN 'rejected'
    ELSE 'max_attempts' END"""


def upgrade() -> None:
    _create_new()
    op.execute(
        "INSERT INTO deliveries (id, kind, tenant, subject_type, subject_id, url, status,"
        " attempt_count, replay_base, next_attempt_at, lease_expires_at, dead_reason, created_at,"
        " delivered_at) SELECT d.id, 'webhook', d.tenant, d.subject_type, d.subject_id, d.url,"
        " CASE WHEN d.status = 'failed' THEN 'dead' ELSE d.status END, d.attempt_count, 0,"
        " d.next_attempt_at, d.lease_expires_at,"
        f" CASE WHEN d.status = 'failed' THEN {DEAD_REASON.format(attempts='webhook_attempts')}"
        " END, d.created_at, d.delivered_at FROM webhook_deliveries d"
    )
    op.execute(
        "INSERT INTO deliveries (id, kind, tenant, integration_id, event_id, action, method,"
        " target, body, status, attempt_count, replay_base, next_attempt_at, lease_expires_at,"
        " last_error, dead_reason, created_at, delivered_at) SELECT d.id, 'integration',"
        " d.tenant, d.integration_id, d.event_id, d.action, d.method, d.target, d.body,"
        " CASE WHEN d.status = 'failed' THEN 'dead' ELSE d.status END, d.attempt_count, 0,"
        " d.next_attempt_at, d.lease_expires_at, d.last_error,"
        f" CASE WHEN d.status = 'failed' THEN {DEAD_REASON.format(attempts='integration_attempts')}"
        " END, d.created_at, d.delivered_at FROM integration_deliveries d"
    )
    outcome = (
        "CASE WHEN status_code >= 200 AND status_code < 300 THEN 'delivered' ELSE 'failed' END"
    )
    op.execute(
        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms,"
        f" status_code, error, outcome) SELECT delivery_id, attempt, started_at, duration_ms,"
        f" status_code, error, {outcome} FROM webhook_attempts ORDER BY id"
    )
    op.execute(
        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms,"
        " status_code, error, retry_after_s, outcome) SELECT delivery_id, attempt, started_at,"
        f" duration_ms, status_code, error, retry_after_s, {outcome} FROM integration_attempts"
        " ORDER BY id"
    )
    for table in ("webhook_attempts", "integration_attempts"):
        op.drop_table(table)
    for table in ("webhook_deliveries", "integration_deliveries"):
        op.drop_table(table)


def downgrade() -> None:
    _create_old()
    status = "CASE WHEN status = 'dead' THEN 'failed' ELSE status END"
    op.execute(
        "INSERT INTO webhook_deliveries (id, tenant, subject_type, subject_id, url, status,"
        " attempt_count, next_attempt_at, lease_expires_at, created_at, delivered_at)"
        f" SELECT id, tenant, subject_type, subject_id, url, {status}, attempt_count,"
        " next_attempt_at, lease_expires_at, created_at, delivered_at FROM deliveries"
        " WHERE kind = 'webhook'"
    )
    op.execute(
        "INSERT INTO integration_deliveries (id, integration_id, event_id, tenant, action, method,"
        " target, body, status, attempt_count, next_attempt_at, lease_expires_at, last_error,"
        f" created_at, delivered_at) SELECT id, integration_id, event_id, tenant, action, method,"
        f" target, body, {status}, attempt_count, next_attempt_at, lease_expires_at, last_error,"
        " created_at, delivered_at FROM deliveries WHERE kind = 'integration'"
    )
    for kind, table, extra in (
        ("webhook", "webhook_attempts", ""),
        ("integration", "integration_attempts", ", retry_after_s"),
    ):
        op.execute(
            f"INSERT INTO {table} (delivery_id, attempt, started_at, duration_ms, status_code,"
            f" error{extra}) SELECT a.delivery_id, a.attempt, a.started_at, a.duration_ms,"
            f" a.status_code, a.error{extra.replace(', ', ', a.')} FROM delivery_attempts a"
            f" JOIN deliveries d ON d.id = a.delivery_id WHERE d.kind = '{kind}' ORDER BY a.id"
        )
    op.drop_table("delivery_attempts")
    op.drop_table("deliveries")


def _create_new() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("subject_type", sa.String(length=16), nullable=True),
        sa.Column("subject_id", sa.String(length=40), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("integration_id", sa.String(length=64), nullable=True),
        sa.Column("event_id", sa.String(length=40), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=True),
        sa.Column("method", sa.String(length=8), nullable=True),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("body", JSON, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("replay_base", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("dead_reason", sa.String(length=32), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["integration_events.id"],
            name=op.f("fk_deliveries_event_id_integration_events"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["integration_id"],
            ["integrations.id"],
            name=op.f("fk_deliveries_integration_id_integrations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_deliveries_tenant_status", "deliveries", ["tenant", "status"])
    for col in ("subject_id", "integration_id", "event_id"):
        op.create_index(op.f(f"ix_deliveries_{col}"), "deliveries", [col])
    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("retry_after_s", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_delivery_attempts_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
    )
    op.create_index(
        op.f("ix_delivery_attempts_delivery_id"), "delivery_attempts", ["delivery_id"]
    )


def _create_old() -> None:
    """The four tables as revisions 0001 and 0004 made them."""
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("subject_type", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"]
    )
    op.create_index(
        op.f("ix_webhook_deliveries_subject_id"), "webhook_deliveries", ["subject_id"]
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index(op.f("ix_webhook_attempts_delivery_id"), "webhook_attempts", ["delivery_id"])
    op.create_table(
        "integration_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("integration_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("body", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["integration_events.id"],
            name=op.f("fk_integration_deliveries_event_id_integration_events"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["integration_id"],
            ["integrations.id"],
            name=op.f("fk_integration_deliveries_integration_id_integrations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_integration_deliveries")),
    )
    op.create_index(
        "ix_integration_deliveries_due", "integration_deliveries", ["status", "next_attempt_at"]
    )
    for col in ("event_id", "integration_id"):
        op.create_index(
            op.f(f"ix_integration_deliveries_{col}"), "integration_deliveries", [col]
        )
    op.create_table(
        "integration_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("retry_after_s", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["integration_deliveries.id"],
            name=op.f("fk_integration_attempts_delivery_id_integration_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_integration_attempts")),
    )
    op.create_index(
        op.f("ix_integration_attempts_delivery_id"), "integration_attempts", ["delivery_id"]
    )
