"""SQL persistence (SQLAlchemy 2 async): PostgreSQL schema-per-tenant and SQLite file-per-tenant."""
