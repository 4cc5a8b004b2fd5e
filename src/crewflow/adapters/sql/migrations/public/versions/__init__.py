"""Revisions of the ``public`` migration branch (Alembic skips this file)."""
