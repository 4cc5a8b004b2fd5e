"""Alembic script directory of the ``public`` migration branch."""
