"""Alembic environment of the ``tenant`` branch: see :func:`crewflow.adapters.sql.migrations.run_env`."""

from crewflow.adapters.sql.migrations import run_env

run_env("tenant")
