"""Rendering of the tenant DDL and of Alembic upgrade scripts (no database)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from crewflow.adapters.sql.migrate import MigrationOptions
from crewflow.adapters.sql.migrations import head_revision, quote_schema, render_upgrade_sql
from crewflow.adapters.sql.provisioning import render_tenant_ddl
from crewflow.adapters.sql.tables import TENANT

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "name",
    ['tenant_x"; DROP SCHEMA public CASCADE; --', "Tenant_Upper", "tenant-x", "", "1tenant", "t" * 64, "tenant x"],
)
def test_a_schema_name_that_could_escape_its_quotes_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        quote_schema(name)


def test_the_tenant_ddl_creates_every_table_and_index_and_stamps_the_head() -> None:
    ddl = render_tenant_ddl()

    for table in TENANT.tables.values():
        assert f"CREATE TABLE {table.name} (" in ddl.body
        for index in table.indexes:
            assert f"CREATE INDEX {index.name} ON {table.name}" in ddl.body
    assert f"INSERT INTO alembic_version (version_num) VALUES ('{head_revision('tenant')}')" in ddl.body
    assert ddl.revision == head_revision("tenant")
    # tables are created before the tables whose foreign keys point at them
    assert ddl.body.index("CREATE TABLE flows (") < ddl.body.index("CREATE TABLE flow_versions (")
    assert ddl.body.index("CREATE TABLE executions (") < ddl.body.index("CREATE TABLE node_runs (")


def test_the_provisioning_script_only_splices_the_validated_quoted_schema_name() -> None:
    ddl = render_tenant_ddl()

    script = ddl.script_for("tenant_abc")

    assert script.startswith('CREATE SCHEMA "tenant_abc";\nSET LOCAL search_path TO "tenant_abc";\n')
    assert script.endswith(ddl.body)
    with pytest.raises(ValueError, match="invalid schema name"):
        ddl.script_for('tenant_abc"; DROP TABLE x; --')


def test_tenant_tables_with_a_schema_or_a_strange_revision_are_refused() -> None:
    qualified = sa.MetaData()
    sa.Table("agents", qualified, sa.Column("id", sa.Integer, primary_key=True), schema="public")
    with pytest.raises(ValueError, match="schema-less"):
        render_tenant_ddl(qualified)
    with pytest.raises(ValueError, match="unexpected revision"):
        render_tenant_ddl(revision="t1'); DROP TABLE x; --")


def test_upgrade_scripts_are_schema_less_sql_without_transaction_control() -> None:
    from_empty = render_upgrade_sql("tenant", None)
    at_head = render_upgrade_sql("tenant", head_revision("tenant"))

    assert "CREATE TABLE alembic_version" in from_empty
    assert "CREATE TABLE IF NOT EXISTS agents" in from_empty
    assert "tenant_" not in from_empty  # nothing names a schema: search_path decides
    assert "BEGIN" not in from_empty
    assert "COMMIT" not in from_empty
    assert "CREATE TABLE" not in at_head  # already at head: nothing to do
    public = render_upgrade_sql("public", None)
    assert "CREATE TABLE IF NOT EXISTS tenants" in public
    assert "CREATE TABLE IF NOT EXISTS tenant_schema_pool" in public


@pytest.mark.parametrize(
    "kwargs", [{"concurrency": 0}, {"lock_timeout_ms": 0}, {"max_attempts": 0}, {"recycle_after": 0}]
)
def test_migration_options_refuse_values_that_would_hang_or_do_nothing(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        MigrationOptions(**kwargs)
