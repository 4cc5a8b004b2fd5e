"""Baseline of the platform schema: tenants, users and the pool of spare tenant schemas.

Revision ID: p0001
Revises:
Create Date: 2026-11-25

Tables of ``crewflow.adapters.sql.tables.PUBLIC`` frozen here, written schema-less (the runner sets
``search_path`` to ``public``; on SQLite they land in the main database). ``tenant_schema_pool`` lists
spare tenant schemas created ahead of time by the provisioner (ADR 0006).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "p0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("slug", sa.String(length=48), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("db_schema", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("db_schema", name=op.f("uq_tenants_db_schema")),
        sa.UniqueConstraint("slug", name=op.f("uq_tenants_slug")),
        if_not_exists=True,
    )
    op.create_index(op.f("ix_tenants_created_at_id"), "tenants", ["created_at", "id"], unique=False, if_not_exists=True)
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), server_default="", nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_users_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        if_not_exists=True,
    )
    op.create_index(op.f("ix_users_tenant_id_email"), "users", ["tenant_id", "email"], unique=False, if_not_exists=True)
    op.create_table(
        "tenant_schema_pool",
        sa.Column("schema_name", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("schema_name", name=op.f("pk_tenant_schema_pool")),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("tenant_schema_pool")
    op.drop_index(op.f("ix_users_tenant_id_email"), table_name="users")
    op.drop_table("users")
    op.drop_index(op.f("ix_tenants_created_at_id"), table_name="tenants")
    op.drop_table("tenants")
