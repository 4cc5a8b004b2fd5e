"""Revisions of the ``tenant`` migration branch (Alembic skips this file)."""
