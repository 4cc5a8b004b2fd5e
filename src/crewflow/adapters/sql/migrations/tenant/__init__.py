"""Alembic script directory of the ``tenant`` migration branch."""
