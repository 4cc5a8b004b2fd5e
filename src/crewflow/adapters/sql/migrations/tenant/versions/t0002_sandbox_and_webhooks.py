"""Tool sandbox columns (script entry point, build context and results, limits, warm pool), flow webhooks
and their delivery log.

Revision ID: t0002
Revises: t0001
Create Date: 2026-11-25

Added columns are nullable or carry a server default, so the change is online (no table rewrite on
PostgreSQL 11+) and running API/worker processes of the previous release keep working during a rollout.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "t0002"
down_revision: str | Sequence[str] | None = "t0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tool_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("script", sa.Text(), nullable=True),
        sa.Column("context", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("image_digest", sa.String(length=500), nullable=True),
        sa.Column("build_error", sa.Text(), nullable=True),
        sa.Column("build_log", sa.Text(), nullable=True),
        sa.Column("built_at", sa.Double(), nullable=True),
        sa.Column("limits", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("warm_pool", sa.Integer(), server_default="0", nullable=False),
    ]


def upgrade() -> None:
    # A schema created by ``create_all`` from the current tables (adopted unstamped by t0001) already has
    # these columns: add only the missing ones, so the revision is safe to run on both.
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":  # rendered once as SQL and run in every schema (see migrate.py)
        dialect = bind.dialect
        adds = ", ".join(
            f"ADD COLUMN IF NOT EXISTS {c.name} {c.type.compile(dialect=dialect)}"
            + ("" if c.server_default is None else f" DEFAULT {c.server_default.arg}")  # type: ignore[attr-defined]
            + ("" if c.nullable else " NOT NULL")
            for c in _tool_columns()
        )
        op.execute(f"ALTER TABLE tools {adds}")
        missing: list[sa.Column[object]] = []
    else:
        existing = {c["name"] for c in sa.inspect(bind).get_columns("tools")}
        missing = [c for c in _tool_columns() if c.name not in existing]
    if missing:
        with op.batch_alter_table("tools") as batch:
            for column in missing:
                batch.add_column(column)
    op.create_table(
        "flow_webhooks",
        sa.Column("flow_id", sa.String(length=128), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("encrypted_secret", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("events", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["flow_id"], ["flows.id"], name=op.f("fk_flow_webhooks_flow_id_flows"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("flow_id", name=op.f("pk_flow_webhooks")),
        if_not_exists=True,
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("flow_id", sa.String(length=128), nullable=False),
        sa.Column("execution_id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("payload", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.Double(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        if_not_exists=True,
    )
    op.create_index(op.f("ix_webhook_deliveries_created_at"), "webhook_deliveries", ["created_at"], unique=False,
                    if_not_exists=True)
    op.create_index(op.f("ix_webhook_deliveries_execution_id"), "webhook_deliveries", ["execution_id"],
                    unique=False, if_not_exists=True)
    op.create_index(op.f("ix_webhook_deliveries_status_next_attempt_at"), "webhook_deliveries",
                    ["status", "next_attempt_at"], unique=False, if_not_exists=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_deliveries_status_next_attempt_at"), table_name="webhook_deliveries")
    op.drop_index(op.f("ix_webhook_deliveries_execution_id"), table_name="webhook_deliveries")
    op.drop_index(op.f("ix_webhook_deliveries_created_at"), table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("flow_webhooks")
    with op.batch_alter_table("tools") as batch:
        for column in ("warm_pool", "limits", "built_at", "build_log", "build_error", "image_digest", "context",
                       "script"):
            batch.drop_column(column)
